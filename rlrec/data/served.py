"""The service's decision log as logged data: ``load_served(store)``, the ``LoggedData`` of ``load_obd``.

One row per shown position of every logged recommendation (rlrec/serve/store.py): the item,
its position, its click (0 when no feedback said otherwise), and its propensity, the exact
probability that the serving policy put that item at that position. So off-policy
estimates (``python evaluate.py env=served env.logs_path=<store> run_dir=<candidate>``) and
off-policy learners run on served traffic as they run on the Open Bandit logs.

:class:`ServedData` adds what the service knows beyond the Open Bandit columns: the full
observation the model saw (history, step, satisfaction), purchases and ratings, which
decision each row belongs to (positions of one slate share a context: resample them
together), the candidates of each request, and the model version that served it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlrec.data.obd import LoggedData


@dataclass
class ServedData(LoggedData):
    """Rows of a service's log (``n`` shown positions of ``D`` decisions); ``LoggedData``'s fields plus these."""

    purchase: torch.Tensor | None = None  # [n] float 0/1
    rating: torch.Tensor | None = None  # [n] long, 1..5, 0 for none
    feedback: torch.Tensor | None = None  # [n] bool: a feedback event arrived for this position
    decision: torch.Tensor | None = None  # [n] long, the row's decision, 0..D-1
    k: torch.Tensor | None = None  # [n] the length of the row's slate
    n_candidates: torch.Tensor | None = None  # [n] how many items the request allowed
    step: torch.Tensor | None = None  # [n] long
    history_items: torch.Tensor | None = None  # [n, H] long (n_items pads)
    history_codes: torch.Tensor | None = None  # [n, H] long
    satisfaction: torch.Tensor | None = None  # [n] long, for shops that observe it
    request_ids: list[str] = field(default_factory=list)  # per decision
    model_versions: list[str] = field(default_factory=list)  # per decision
    candidates: list[list[int] | None] = field(default_factory=list)  # per decision (None: every item)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)  # model version -> manifest

    def observation(self, rows: torch.Tensor | slice = slice(None), history_len: int | None = None) -> dict:
        """The agents' observation of ``rows`` (what the serving model saw), with the history cut
        or padded to ``history_len`` most recent steps for an agent with another length."""
        items, codes = self.history_items[rows], self.history_codes[rows]
        if history_len is not None and history_len != items.shape[1]:
            extra = history_len - items.shape[1]
            if extra < 0:
                items, codes = items[:, -history_len:], codes[:, -history_len:]
            else:
                items = torch.cat([torch.full((items.shape[0], extra), self.n_items), items], 1)
                codes = torch.cat([torch.zeros(codes.shape[0], extra, dtype=torch.long), codes], 1)
        obs = {
            "user_features": self.user_features[rows],
            "history_items": items,
            "history_codes": codes,
            "step": self.step[rows],
        }
        if self.satisfaction is not None:
            obs["satisfaction"] = self.satisfaction[rows]
        return obs

    def candidate_mask(self, rows: torch.Tensor) -> torch.Tensor | None:
        """[len(rows), N] bool: the items each row's request allowed (None: every request allowed all)."""
        if all(c is None for c in self.candidates):
            return None
        mask = torch.ones(rows.numel(), self.n_items, dtype=torch.bool)
        for j, d in enumerate(self.decision[rows].tolist()):
            if self.candidates[d] is not None:
                mask[j] = False
                mask[j, self.candidates[d]] = True
        return mask


def load_served(store: str | Path, model_version: str | None = None) -> ServedData:
    """Every shown position in the store (a SQLite file or a SQLAlchemy URL) of a service's log.

    ``model_version``: only the decisions that model served. Positions without feedback count
    as not clicked (the service logs what it showed; a click is news).
    """
    from sqlalchemy import and_, select

    from rlrec.serve.store import StoreError, open_engine, tables

    engine = open_engine(store, create=False)
    t = tables()
    d, i, f = t["decisions"], t["impressions"], t["feedback"]
    which = d.c.model_version == model_version if model_version is not None else True
    with engine.connect() as conn:
        decisions = conn.execute(
            select(
                d.c.seq,
                d.c.request_id,
                d.c.model_version,
                d.c.user_features,
                d.c.history_items,
                d.c.history_codes,
                d.c.step,
                d.c.satisfaction,
                d.c.candidates,
                d.c.n_candidates,
                d.c.k,
            )
            .where(which)
            .order_by(d.c.seq)
        ).all()
        shown = conn.execute(
            select(d.c.seq, i.c.position, i.c.item, i.c.propensity, f.c.click, f.c.purchase, f.c.rating)
            .select_from(
                i.join(d, i.c.request_id == d.c.request_id).outerjoin(
                    f, and_(f.c.request_id == i.c.request_id, f.c.position == i.c.position)
                )
            )
            .where(which)
            .order_by(d.c.seq, i.c.position)
        ).all()
        catalog = conn.execute(select(t["catalog"]).order_by(t["catalog"].c.item)).all()
        manifests = {row.version: json.loads(row.manifest) for row in conn.execute(select(t["models"])).all()}
    engine.dispose()
    where = f"store {store}" + (f", model {model_version}" if model_version else "")
    if not decisions or not shown:
        raise StoreError(f"{where} holds no decisions yet: serve some traffic first.")

    def column(rows: list, name: str) -> list:
        return [getattr(r, name) for r in rows]

    def parsed(name: str) -> torch.Tensor:  # one JSON list per decision, parsed in one call
        return torch.tensor(json.loads("[" + ",".join(column(decisions, name)) + "]"), dtype=torch.long)

    seqs = np.array(column(decisions, "seq"))
    row_decision = torch.from_numpy(np.searchsorted(seqs, np.array(column(shown, "seq"))))
    per_row = lambda values: values[row_decision]
    satisfaction = column(decisions, "satisfaction")
    feedback = torch.tensor([r.click is not None for r in shown])
    n_candidates = torch.tensor(column(decisions, "n_candidates"))
    sizes = next(iter(manifests.values()))["user_features"]["sizes"]
    return ServedData(
        action=torch.tensor(column(shown, "item"), dtype=torch.long),
        position=torch.tensor(column(shown, "position"), dtype=torch.long),
        click=torch.tensor([r.click or 0 for r in shown], dtype=torch.float32),
        propensity=torch.tensor(column(shown, "propensity"), dtype=torch.float64),
        user_features=per_row(parsed("user_features")),
        affinity=None,
        item_price=torch.tensor([r.price for r in catalog], dtype=torch.float32),
        item_categories=torch.tensor([[r.category, r.brand] for r in catalog], dtype=torch.long),
        user_vocab=[[str(v) for v in range(size)] for size in sizes],
        policy="served",
        campaign=str(store),
        purchase=torch.tensor([r.purchase or 0 for r in shown], dtype=torch.float32),
        rating=torch.tensor([r.rating or 0 for r in shown], dtype=torch.long),
        feedback=feedback,
        decision=row_decision,
        k=per_row(torch.tensor(column(decisions, "k"))),
        n_candidates=per_row(n_candidates),
        step=per_row(torch.tensor(column(decisions, "step"))),
        history_items=per_row(parsed("history_items")),
        history_codes=per_row(parsed("history_codes")),
        satisfaction=None if satisfaction[0] is None else per_row(torch.tensor(satisfaction)),
        request_ids=column(decisions, "request_id"),
        model_versions=column(decisions, "model_version"),
        candidates=[None if c is None else json.loads(c) for c in column(decisions, "candidates")],
        manifests=manifests,
    )
