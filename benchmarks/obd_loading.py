"""Loading speed and memory of the Open Bandit Dataset reader on a generated file.

    python benchmarks/obd_loading.py --rows 5000000 --out bench_obd.json

Writes a file in the dataset's layout (random policy, 80 items, like the full 'all'
campaign) into a temporary directory, then loads it in a fresh process and reports rows/s
and the peak resident memory of that process (with and without the affinity matrix), beside
the memory its imports take and the size of the loaded result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(root: Path, rows: int, n_items: int = 80, chunk: int = 500_000, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    directory = root / "random" / "all"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    items = pa.table(
        {
            "": np.arange(n_items),
            "item_id": np.arange(n_items),
            "item_feature_0": rng.normal(size=n_items),
            **{
                f"item_feature_{i}": [f"{h:032x}" for h in rng.integers(0, 2**62, n_items) % (7 * i)] for i in (1, 2, 3)
            },
        }
    )
    pacsv.write_csv(items, directory / "item_context.csv")
    hashes = [f"{h:032x}" for h in rng.integers(0, 2**62, 64)]
    with open(directory / "all.csv", "wb") as f:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            columns = {
                "": np.arange(start, start + n),
                "timestamp": np.full(n, "2019-11-24 00:00:00+00:00"),
                "item_id": rng.integers(0, n_items, n),
                "position": rng.integers(1, 4, n),
                "click": (rng.random(n) < 0.005).astype(np.int64),
                "propensity_score": np.full(n, 1 / n_items),
            }
            for i, size in enumerate((3, 5, 9, 8)):
                columns[f"user_feature_{i}"] = np.array(hashes[:size])[rng.integers(0, size, n)]
            affinity = np.where(rng.random((n, n_items)) < 0.002, rng.integers(1, 5, (n, n_items)), 0).astype(float)
            for j in range(n_items):
                columns[f"user-item_affinity_{j}"] = affinity[:, j]
            pacsv.write_csv(pa.table(columns), f, write_options=pacsv.WriteOptions(include_header=start == 0))
    return root


# Peak memory is the process's VmHWM (Linux): ru_maxrss would also count the pre-exec copy
# of the (large) generating parent, which Linux carries across fork + exec.
LOADER = """
import json, re, sys, time
def peak_mb():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
from rlrec.data.obd import load_obd
import_mb = peak_mb()
start = time.perf_counter()
data = load_obd(sys.argv[1], policy="random", campaign="all", with_affinity=sys.argv[2] == "1")
elapsed = time.perf_counter() - start
result_mb = sum(t.numel() * t.element_size() for t in (data.action, data.position, data.click, data.propensity,
                                                       data.user_features, data.affinity) if t is not None) / 2**20
print(json.dumps({"rows": len(data), "seconds": elapsed, "rows_per_s": len(data) / elapsed,
                  "peak_rss_mb": peak_mb(), "after_imports_mb": import_mb, "result_mb": result_mb}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--out", default="bench_obd.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = generate(Path(tmp), args.rows)
        size_mb = (root / "random" / "all" / "all.csv").stat().st_size / 2**20
        print(f"generated {args.rows:,} rows ({size_mb:,.0f} MB of CSV) in {time.perf_counter() - t0:.0f} s")
        results = []
        for affinity in ("0", "1"):
            out = subprocess.run(
                [sys.executable, "-c", LOADER, str(root), affinity], capture_output=True, text=True, check=True
            )
            row = {**json.loads(out.stdout), "with_affinity": affinity == "1", "csv_mb": size_mb}
            results.append(row)
            print(
                f"with_affinity={row['with_affinity']!s:>5}: {row['rows_per_s']:,.0f} rows/s "
                f"({row['seconds']:.1f} s), peak RSS {row['peak_rss_mb']:,.0f} MB (imports "
                f"{row['after_imports_mb']:,.0f} MB, result {row['result_mb']:,.0f} MB)"
            )
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
