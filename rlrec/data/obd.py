"""The Open Bandit Dataset (ZOZOTOWN fashion e-commerce, Saito et al. 2021) as tensors.

Layout of the release and of the sample shipped in ``rlrec/data/obd_sample/``::

    <root>/<policy>/<campaign>/<campaign>.csv[.gz]     one impression per row
    <root>/<policy>/<campaign>/item_context.csv[.gz]   one item per row

``load_obd(path=None, policy="random", campaign="men")`` reads the shipped sample (a
10,000-impression file per policy and campaign) or, with ``path``, a copy of the full
release (about 26 million impressions). The file is streamed in blocks by Arrow's CSV
reader into outputs allocated once (after counting the lines), so memory holds the
compact result plus a few blocks, never the text.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from rlrec.agents.base import AgentSpec

SAMPLE_DIR = Path(__file__).resolve().parent / "obd_sample"
USER_COLUMNS = [f"user_feature_{i}" for i in range(4)]
ITEM_CATEGORY_COLUMNS = [f"item_feature_{i}" for i in range(1, 4)]
N_POSITIONS = 3


class OBDFormatError(ValueError):
    """A logged-data file is missing, lacks a column, or holds an invalid value (names file, line, column)."""


@dataclass
class LoggedData:
    """Logged impressions of one behaviour policy and campaign. ``n`` rows, ``N`` items."""

    action: torch.Tensor  # [n] long, the item shown
    position: torch.Tensor  # [n] long, the slot 0..2 (the files count 1..3)
    click: torch.Tensor  # [n] float, 0/1
    propensity: torch.Tensor  # [n] float64, P(logging policy shows this item in this slot)
    user_features: torch.Tensor  # [n, 4] long, dictionary codes of the hashed user features
    affinity: torch.Tensor | None  # [n, N] float16, user-item affinity counts (None if not loaded)
    item_price: torch.Tensor  # [N] float, item_feature_0 (standardised, price-like)
    item_categories: torch.Tensor  # [N, C] long, item category codes (OBD: item_feature_1..3; served: category, brand)
    user_vocab: list[list[str]] = field(default_factory=list)  # code -> hashed value, per user column
    policy: str = ""
    campaign: str = ""

    @property
    def n_items(self) -> int:
        return self.item_price.shape[0]

    def __len__(self) -> int:
        return self.action.shape[0]

    def agent_spec(self, n_user_features: int = 3) -> AgentSpec:
        """What these logs show an agent: their catalog, the first ``n_user_features`` user columns,
        one impression per row (K = 1) and no session history."""
        from rlrec.agents.base import AgentSpec

        category, brand = self.item_categories[:, 0], self.item_categories[:, 1]
        sizes = tuple(int(self.user_features[:, i].max()) + 1 if len(self) else 1 for i in range(n_user_features))
        return AgentSpec(
            n_items=self.n_items,
            slate_size=1,
            num_users=max(len(self), 1),
            user_feature_sizes=sizes,
            history_len=1,
            horizon=1,
            observe_satisfaction=False,
            satisfaction_levels=1,
            n_categories=int(category.max()) + 1,
            n_brands=int(brand.max()) + 1,
            item_category=category,
            item_brand=brand,
            item_price=self.item_price,
        )


def _open_text(path: Path):
    return gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")


def _find(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise OBDFormatError(
        f"{directory / name} not found: expected <path>/<policy>/<campaign>/{name} "
        "(the Open Bandit Dataset layout), optionally gzip-compressed."
    )


def _locate_bad_value(path: Path, column: str, check) -> str:
    """Scan ``path`` for the first row whose ``column`` fails ``check``: 'line L: value'."""
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        for line, row in enumerate(reader, start=2):
            value = row.get(column)
            if not check(value):
                return f"line {line}: {value!r}"
    return "line unknown"


def _valid_propensity(value) -> bool:
    try:
        p = float(value)
    except (TypeError, ValueError):
        return False
    return 0.0 < p <= 1.0


def load_obd(
    path: str | Path | None = None,
    policy: str = "random",
    campaign: str = "men",
    with_affinity: bool = True,
    block_size: int = 1 << 20,
) -> LoggedData:
    """Load one policy/campaign of the Open Bandit Dataset.

    Args:
        path: root of a copy of the dataset (``None``: the sample shipped with rlrec).
        policy: ``"random"`` or ``"bts"`` (the behaviour policy that logged the data).
        campaign: ``"men"``, ``"women"`` or (full release) ``"all"``.
        with_affinity: also load the per-row user-item affinity counts ([n, N] float16;
            about 4 GB for the full ``all`` campaign, so leave it off there if memory is short).
        block_size: bytes of CSV text parsed at a time (Arrow reads a few blocks ahead, so small
            blocks keep memory low; 1 MB was also the fastest in benchmarks/obd_loading.py).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    root = Path(path) if path is not None else SAMPLE_DIR
    directory = root / policy / campaign
    if not directory.is_dir():
        raise OBDFormatError(
            f"{directory} is not a directory: expected <path>/<policy>/<campaign>/ with policy "
            "'random' or 'bts' and campaign 'men', 'women' or 'all'."
        )
    item_path = _find(directory, "item_context.csv")
    log_path = _find(directory, f"{campaign}.csv")

    items = pacsv.read_csv(pa.input_stream(str(item_path), compression="detect"))
    for column in ["item_id", "item_feature_0", *ITEM_CATEGORY_COLUMNS]:
        if column not in items.column_names:
            raise OBDFormatError(f"{item_path} has no column {column!r}.")
    item_ids = items.column("item_id").to_numpy(zero_copy_only=False)
    n_items = len(item_ids)
    if (
        n_items == 0
        or not np.issubdtype(item_ids.dtype, np.integer)
        or not np.array_equal(np.sort(item_ids), np.arange(n_items))
    ):
        raise OBDFormatError(
            f"{item_path}, column 'item_id': the items must be numbered 0..N-1, each once (found {n_items} rows)."
        )
    price = items.column("item_feature_0").to_numpy(zero_copy_only=False)
    if not np.issubdtype(price.dtype, np.number) or not np.isfinite(price).all():
        bad = next(i for i, v in enumerate(price) if not _is_number(v) or not np.isfinite(float(v)))
        raise OBDFormatError(f"{item_path}, line {bad + 2}, column 'item_feature_0': {price[bad]!r} is not a number.")
    order = np.argsort(item_ids)
    item_price = torch.tensor(price[order].astype(np.float32), dtype=torch.float32)
    item_categories = torch.stack(
        [
            torch.from_numpy(
                pc.dictionary_encode(items.column(c).cast(pa.string()))
                .combine_chunks()
                .indices.to_numpy(zero_copy_only=False)
                .astype(np.int64)[order]
            )
            for c in ITEM_CATEGORY_COLUMNS
        ],
        1,
    )

    numeric = {"item_id": pa.int64(), "position": pa.int64(), "click": pa.int64(), "propensity_score": pa.float64()}
    affinity_columns = [f"user-item_affinity_{i}" for i in range(n_items)]
    wanted = list(numeric) + USER_COLUMNS + (affinity_columns if with_affinity else [])
    convert = pacsv.ConvertOptions(
        column_types={**numeric, **{c: pa.string() for c in USER_COLUMNS}}, include_columns=wanted
    )
    with _open_text(log_path) as f:
        header = next(csv.reader(f), [])
    for column in wanted:
        if column not in header:
            raise OBDFormatError(f"{log_path} has no column {column!r} (its header has {len(header)} columns).")
    try:
        reader = pacsv.open_csv(
            pa.input_stream(str(log_path), compression="detect"),
            read_options=pacsv.ReadOptions(block_size=block_size),
            convert_options=convert,
        )
    except pa.ArrowInvalid as err:
        raise _explain(log_path, err, header) from err

    # Outputs are allocated once, for an upper bound on the row count, and filled block by
    # block: peak memory is the result plus Arrow's few blocks of read-ahead, never the text
    # or a second copy of the result.
    capacity = _count_data_lines(log_path)
    out = {
        "action": np.empty(capacity, np.int64),
        "position": np.empty(capacity, np.int64),
        "click": np.empty(capacity, np.float32),
        "propensity": np.empty(capacity, np.float64),
        "users": np.empty((capacity, len(USER_COLUMNS)), np.int64),
    }
    if with_affinity:
        out["affinity"] = np.zeros((capacity, n_items), np.float16)
    vocab: list[dict[str, int]] = [{} for _ in USER_COLUMNS]
    rows_before = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as err:
            raise _explain(log_path, err, header) from err
        rows = slice(rows_before, rows_before + batch.num_rows)
        for column in numeric:
            if batch.column(column).null_count:
                row = int(np.argmax(batch.column(column).is_null().to_numpy(zero_copy_only=False)))
                raise OBDFormatError(f"{log_path}, line {rows_before + row + 2}, column {column!r}: empty.")
        propensity = batch.column("propensity_score").to_numpy(zero_copy_only=False)
        bad = ~((propensity > 0) & (propensity <= 1))  # NaN (an empty cell) is bad too
        if bad.any():
            row = int(np.argmax(bad))
            raise OBDFormatError(
                f"{log_path}, line {rows_before + row + 2}, column 'propensity_score': "
                f"{propensity[row]} is not a probability in (0, 1]."
            )
        click = batch.column("click").to_numpy(zero_copy_only=False)
        bad = (click != 0) & (click != 1)
        if bad.any():
            row = int(np.argmax(bad))
            raise OBDFormatError(
                f"{log_path}, line {rows_before + row + 2}, column 'click': {click[row]} is not "
                "0 or 1 (a click is logged as 1, no click as 0)."
            )
        out["propensity"][rows] = propensity
        out["action"][rows] = batch.column("item_id").to_numpy(zero_copy_only=False)
        out["position"][rows] = batch.column("position").to_numpy(zero_copy_only=False) - 1
        out["click"][rows] = click
        for i, column in enumerate(USER_COLUMNS):
            encoded = pc.dictionary_encode(batch.column(column))
            local = encoded.dictionary.to_pylist()
            remap = np.array([vocab[i].setdefault(v, len(vocab[i])) for v in local], dtype=np.int64)
            out["users"][rows, i] = remap[encoded.indices.to_numpy(zero_copy_only=False)]
        if with_affinity:
            for j, column in enumerate(affinity_columns):
                out["affinity"][rows, j] = batch.column(column).to_numpy(zero_copy_only=False)
        rows_before += batch.num_rows

    if rows_before == 0:
        raise OBDFormatError(f"{log_path} has a header but no data rows: logged data needs at least one impression.")

    def filled(key: str) -> torch.Tensor:
        return torch.from_numpy(out[key][:rows_before])

    action = filled("action")
    if len(action) and (int(action.min()) < 0 or int(action.max()) >= n_items):
        raise OBDFormatError(
            f"{log_path}, column 'item_id': ids must be in 0..{n_items - 1} (item_context has "
            f"{n_items} items), found {int(action.min())}..{int(action.max())}."
        )
    position = filled("position")
    if len(position) and (int(position.min()) < 0 or int(position.max()) >= N_POSITIONS):
        raise OBDFormatError(f"{log_path}, column 'position': must be 1, 2 or 3.")
    return LoggedData(
        action=action,
        position=position,
        click=filled("click"),
        propensity=filled("propensity"),
        user_features=filled("users"),
        affinity=filled("affinity") if with_affinity else None,
        item_price=item_price,
        item_categories=item_categories,
        user_vocab=[list(v) for v in vocab],
        policy=policy,
        campaign=campaign,
    )


def _count_data_lines(path: Path, chunk: int = 1 << 24) -> int:
    """Lines after the header: an upper bound on the rows (a quoted field may span lines)."""
    opener = gzip.open if path.suffix == ".gz" else open
    lines, last = 0, b"\n"
    with opener(path, "rb") as f:
        while block := f.read(chunk):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(lines - 1 + (last != b"\n"), 0)


def _explain(path: Path, err: Exception, header: list[str]) -> OBDFormatError:
    """Turn Arrow's conversion error ('CSV column #5: ...') into one naming the file, the line and the column."""
    import re

    match = re.search(r"column #(\d+)", str(err))
    column = header[int(match.group(1))] if match and int(match.group(1)) < len(header) else None
    if column is None:
        return OBDFormatError(f"{path}: {err}")
    if column == "propensity_score":
        where = _locate_bad_value(path, column, _valid_propensity)
        return OBDFormatError(f"{path}, {where}, column 'propensity_score': not a probability in (0, 1].")
    where = _locate_bad_value(path, column, _is_number)
    return OBDFormatError(f"{path}, {where}, column {column!r}: not a number.")


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
