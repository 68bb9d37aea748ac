"""Writing reports: markdown tables, bar and line charts, and the report files themselves.

Every report (a run in the simulator, policies on logged data, the benchmarks) goes
through these functions, so they look alike and are written the same way.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def mean_ci_cell(stat: dict[str, float], digits: int = 3) -> str:
    """``"12.345 ± 0.678"`` (the ± part only when the interval is non-zero)."""
    ci = stat.get("ci95", 0.0)
    return f"{stat['mean']:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci else "")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half a report)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_report(out_dir: Path, report: dict[str, Any], markdown: str) -> None:
    """``eval.json`` and ``eval.md`` in ``out_dir`` (created if missing)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_text(Path(out_dir) / "eval.json", json.dumps(report, indent=1))
    write_text(Path(out_dir) / "eval.md", markdown)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(
    path: Path, labels: Sequence[str], series: dict[str, tuple[list, list, list]], ylabel: str, title: str
) -> None:
    """Grouped bars with asymmetric error bars: ``series[name] = (values, below, above)``, one value per label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels)), 3.8))
    width = 0.8 / max(len(series), 1)
    for j, (name, (values, below, above)) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, values, width, yerr=[below, above], capsize=3, label=name if len(series) > 1 else None)
    ax.set_xticks(range(len(labels)), labels, rotation=15 if len(labels) > 4 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def line_chart(path: Path, points: Sequence[tuple[float, float]], xlabel: str, ylabel: str, title: str) -> None:
    """One curve through ``points`` ((x, y) pairs)."""
    plt = _pyplot()
    xs, ys = zip(*points)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def estimates_chart(path: Path, estimates: dict[str, dict[str, Any | None]], ylabel: str, title: str) -> None:
    """:func:`bar_chart` of off-policy estimates: ``estimates[estimator][policy]`` is a
    ``{"value", "ci_low", "ci_high"}`` dict, or None where that estimator does not apply to the
    policy; an estimator that applies to none is left out."""
    labels = list(next(iter(estimates.values()), {}))
    series = {}
    for name, by_policy in estimates.items():
        rows = [by_policy[label] for label in labels]
        if any(rows):
            series[name] = (
                [e["value"] if e else float("nan") for e in rows],
                [e["value"] - e["ci_low"] if e else 0.0 for e in rows],
                [e["ci_high"] - e["value"] if e else 0.0 for e in rows],
            )
    bar_chart(path, labels, series, ylabel, title)
