"""Evaluation on a service's own logs: ``python evaluate.py env=served env.logs_path=<store> [run_dir=<run>]``.

Nothing is trained or simulated. From the decision log (:func:`rlrec.data.served.load_served`)
it estimates the click rate and the purchase rate per shown impression, at the logged
positions, that each policy would have had:

- the candidate run's agent (``run_dir`` or ``checkpoint``), served greedily: the item at
  each logged position is the one its scores put there among the request's candidates;
- ``uniform``: a uniformly random slate of the request's candidates (a yardstick);
- ``served``: the logging policy itself, measured on its own logs (``on_policy``).

Each with IPS, SNIPS, DM and DR (:mod:`rlrec.eval.ope`) and bootstrap 95% intervals that
resample whole decisions (the positions of one slate share a context and compete for one
click). The reward model of DM and DR (:mod:`rlrec.data.click_model`, fitted once for clicks
and once for purchases) is cross-fitted: the decisions are split in two halves and each
row is predicted by the model fitted on the other half.

What IPS estimates here: over the logged requests and positions, the probability of a click
on the item the evaluated policy would show at that position. With one item per slate that
is exactly the policy's click rate on these requests; with longer slates the click on one
position also depends on the other items shown (they compete for one click), which
per-position estimates assume away, as they do on the Open Bandit logs. The diagnostics say
how much the logs can tell: the effective sample size ``(sum w)^2 / sum w^2`` of the
importance weights and the share of rows where the policy agrees with the logged item.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from rlrec.config import ConfigError
from rlrec.data.served import ServedData, load_served
from rlrec.eval.ope import ESTIMATORS, bootstrap_mean, estimates_from_rows
from rlrec.eval.output import bar_chart, markdown_table, write_report
from rlrec.train.run import load_run, resolve_checkpoint

METRICS = ("click", "purchase")


def evaluate_served(
    store: str,
    n_boot: int = 1000,
    seed: int = 0,
    out_dir: str | Path = ".",
    run_dir: str | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
    reward_model: bool = True,
) -> dict[str, Any]:
    """Estimate each policy's click and purchase rates from the service's log at ``store``; write the report."""
    data = load_served(store)
    items: dict[str, torch.Tensor | None] = {}  # label -> [n] item it shows at each row's position (None: uniform)
    if run_dir or checkpoint:
        run = load_run(resolve_checkpoint(run_dir, checkpoint), num_users=1, **({"device": device} if device else {}))
        _check_fits(run, data)
        items[run.label] = greedy_items(run.agent, data)
    items["uniform"] = None
    folds = _folds(data, seed)
    models = {metric: _cross_fit(data, metric, folds, seed) for metric in METRICS} if reward_model else {}

    results: dict[str, Any] = {}
    diagnostics: dict[str, Any] = {}
    for label, shown in items.items():
        if shown is None:
            pi_logged = 1.0 / data.n_candidates.double()
        else:
            pi_logged = (shown == data.action).double()
        weight = pi_logged / data.propensity
        diagnostics[label] = {
            "effective_sample_size": float(weight.sum() ** 2 / (weight**2).sum().clamp_min(1e-300)),
            "agreement": float((pi_logged > 0).double().mean()) if shown is not None else None,
        }
        results[label] = {}
        for metric in METRICS:
            reward = getattr(data, metric)
            dm = q_logged = None
            if models:
                q_logged = _predict(models[metric], data, data.action)
                dm = (
                    _predict(models[metric], data, shown) if shown is not None else _uniform_value(models[metric], data)
                )
            estimates = estimates_from_rows(
                reward, pi_logged, data.propensity, dm, q_logged, n_boot=n_boot, seed=seed, groups=data.decision
            )
            results[label][metric] = {name: e.as_dict() for name, e in estimates.items()}
    results["served"] = {
        metric: {"on_policy": bootstrap_mean(getattr(data, metric), "on_policy", n_boot, seed, data.decision).as_dict()}
        for metric in METRICS
    }
    report = {
        "kind": "served",
        "store": str(store),
        "logs": {
            "rows": len(data),
            "decisions": len(data.request_ids),
            "with_feedback": int(data.feedback.sum()),
            "clicks": int(data.click.sum()),
            "purchases": int(data.purchase.sum()),
            "model_versions": {v: data.model_versions.count(v) for v in sorted(set(data.model_versions))},
        },
        "reward_model": "click model, cross-fitted on two halves of the decisions" if models else None,
        "policies": results,
        "diagnostics": diagnostics,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, report, format_markdown(report))
    _plot(report, out / "policies.png")
    return report


def _check_fits(run: Any, data: ServedData) -> None:
    """The candidate must know the served catalog and read the served observations."""
    spec, shop = run.agent.spec, run.shop
    same_catalog = (
        spec.n_items == data.n_items
        and torch.equal(shop.catalog.category.cpu(), data.item_categories[:, 0])
        and torch.equal(shop.catalog.brand.cpu(), data.item_categories[:, 1])
        and torch.equal(shop.catalog.price.cpu().float(), data.item_price)
    )
    sizes = list(next(iter(data.manifests.values()))["user_features"]["sizes"])
    problem = None
    if not same_catalog:
        problem = f"its catalog ({spec.n_items} items) is not the one the service logged ({data.n_items} items)"
    elif list(spec.user_feature_sizes) != sizes:
        problem = f"its user features {list(spec.user_feature_sizes)} are not the logged ones {sizes}"
    elif spec.observe_satisfaction and data.satisfaction is None:
        problem = "it reads the customer's satisfaction, which the served requests did not carry"
    if problem:
        raise ConfigError(
            f"the run at {run.path} cannot be evaluated on these logs: {problem}. Evaluate a run trained "
            "in the shop the served model came from."
        )


@torch.no_grad()
def greedy_items(agent: Any, data: ServedData, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """[n] the item ``agent`` would show at each row's position: its top scores among the row's candidates."""
    module = agent.scoring_module()
    device = next((t.device for t in module.buffers()), torch.device("cpu"))
    n, rows_per_chunk = len(data), max(1, chunk_elements // data.n_items)
    out = torch.empty(n, dtype=torch.long)
    for start in range(0, n, rows_per_chunk):
        rows = torch.arange(start, min(start + rows_per_chunk, n))
        obs = {k: v.to(device) for k, v in data.observation(rows, agent.spec.history_len).items()}
        scores = module(obs).float().cpu()
        mask = data.candidate_mask(rows)
        if mask is not None:
            scores = scores.masked_fill(~mask, -math.inf)
        position = data.position[rows]
        ranked = scores.topk(int(position.max()) + 1, dim=1).indices
        out[rows] = ranked.gather(1, position.view(-1, 1)).squeeze(1)
    return out


def _folds(data: ServedData, seed: int) -> torch.Tensor:
    """[n] 0 or 1: the half of the decisions each row belongs to."""
    generator = torch.Generator().manual_seed(seed)
    half = torch.randperm(len(data.request_ids), generator=generator) % 2
    return half[data.decision]


def _cross_fit(data: ServedData, metric: str, fold: torch.Tensor, seed: int) -> dict[str, Any]:
    """Two reward models of ``metric``, each fitted on one half; the prior strength chosen on the first."""
    from rlrec.data.click_model import fit_click_model

    labelled = dataclasses.replace(data, click=getattr(data, metric))
    halves = [torch.nonzero(fold == h).squeeze(1) for h in (0, 1)]
    if min(int(labelled.click[rows].sum()) for rows in halves) == 0:
        return {"fold": fold, "models": None, "rate": float(labelled.click.double().mean())}
    first = fit_click_model(labelled, halves[0], folds=3, seed=seed)
    second = fit_click_model(labelled, halves[1], l2=first.l2, seed=seed)
    # rows of half h are predicted by the model fitted on the other half
    return {"fold": fold, "models": (second, first)}


def _predict(fitted: dict[str, Any], data: ServedData, items: torch.Tensor) -> torch.Tensor:
    """[n] the cross-fitted probability of the reward for ``items`` [n] in each row's context."""
    if fitted["models"] is None:
        return torch.full((len(data),), fitted["rate"], dtype=torch.float64)
    out = torch.empty(len(data), dtype=torch.float64)
    for h, model in enumerate(fitted["models"]):
        rows = torch.nonzero(fitted["fold"] == h).squeeze(1)
        logits = model.logits(data.user_features[rows], items[rows], data.position[rows])
        out[rows] = torch.sigmoid(logits).detach()
    return out


def _uniform_value(fitted: dict[str, Any], data: ServedData, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """[n] the reward model's expected reward of a uniformly random candidate in each row's context."""
    if fitted["models"] is None:
        return torch.full((len(data),), fitted["rate"], dtype=torch.float64)
    out = torch.empty(len(data), dtype=torch.float64)
    step = max(1, chunk_elements // data.n_items)
    for h, model in enumerate(fitted["models"]):
        rows_h = torch.nonzero(fitted["fold"] == h).squeeze(1)
        for start in range(0, rows_h.numel(), step):
            rows = rows_h[start : start + step]
            p = torch.sigmoid(model.item_logits(data.user_features[rows], data.position[rows])).detach()
            mask = data.candidate_mask(rows)
            if mask is None:
                out[rows] = p.mean(1)
            else:
                out[rows] = (p * mask).sum(1) / mask.sum(1)
    return out


def format_markdown(report: dict[str, Any]) -> str:
    logs = report["logs"]
    names = ESTIMATORS + ("on_policy",)
    lines = [
        f"# Policies on the service's logs: {report['store']}",
        "",
        f"{logs['decisions']} decisions, {logs['rows']} shown positions, {logs['clicks']} clicks, "
        f"{logs['purchases']} purchases; served by {', '.join(logs['model_versions'])}. Per shown position, "
        "estimate [bootstrap 95% interval, decisions resampled]."
        + (f" DM/DR reward model: {report['reward_model']}." if report["reward_model"] else ""),
    ]
    for metric in METRICS:
        rows = []
        for label, estimates in report["policies"].items():
            cells = [
                f"{e['value']:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}]"
                if (e := estimates[metric].get(name))
                else "-"
                for name in names
            ]
            ess = report["diagnostics"].get(label, {}).get("effective_sample_size")
            rows.append([label, *cells, f"{ess:,.0f}" if ess is not None else "-"])
        lines += ["", f"## {metric} rate", "", markdown_table(["policy", *names, "effective sample size"], rows)]
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    labels = list(report["policies"])
    series = {}
    for name in ("ips", "dr", "on_policy"):
        estimates = [report["policies"][label]["click"].get(name) for label in labels]
        if any(estimates):
            series[name] = (
                [e["value"] if e else float("nan") for e in estimates],
                [e["value"] - e["ci_low"] if e else 0.0 for e in estimates],
                [e["ci_high"] - e["value"] if e else 0.0 for e in estimates],
            )
    bar_chart(path, labels, series, "click rate per shown item (95% CI)", "Policies on the served logs")
