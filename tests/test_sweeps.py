"""Multirun sweeps: basic, joblib and submitit_local launchers, and an Optuna search."""

import json
from pathlib import Path

import pytest
import yaml
from test_workflow import run

TINY = [
    "env.n_items=60",
    "env.num_users=32",
    "agent.learning_starts=64",
    "agent.batch_size=32",
    "agent.buffer_size=4096",
    "agent.embed_dim=8",
    "agent.hidden_dim=16",
    "trainer.env_steps=20",
    "trainer.log_every=10",
    "trainer.checkpoint_every=0",
    "trainer.eval_users=32",
    "trainer.progress=false",
]


def _assert_jobs(sweep_dir: Path, n: int) -> None:
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == [str(i) for i in range(n)]
    for job in jobs:
        assert (job / "checkpoint.pt").is_file() and (job / "train_eval.json").is_file()
        assert list((job / "tb").glob("events.out.tfevents.*")), f"{job} has no TensorBoard run"


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_multirun_with_each_launcher(tmp_path, launcher):
    sweep = tmp_path / launcher
    extra = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    run("train.py", "-m", *TINY, "seed=0,1", "agent.lr=0.001,0.0003", *extra, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    _assert_jobs(sweep, 4)
    configs = [yaml.safe_load((sweep / str(i) / ".hydra" / "overrides.yaml").read_text()) for i in range(4)]
    assert sorted(tuple(c[-2:]) for c in configs) == sorted(
        (f"seed={s}", f"agent.lr={lr}") for s in (0, 1) for lr in ("0.001", "0.0003")
    )


def test_optuna_search_maximises_the_returned_metric(tmp_path):
    sweep = tmp_path / "optuna"
    run(
        "train.py",
        *TINY,
        "hparams_search=dqn_optuna",
        "hydra.sweeper.n_trials=3",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    _assert_jobs(sweep, 3)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = [
        json.loads((sweep / str(i) / "train_eval.json").read_text())["trained"]["episodic_return"]["mean"]
        for i in range(3)
    ]
    assert result["best_value"] == pytest.approx(max(values))
    assert set(result["best_params"]) >= {"agent.lr", "agent.gamma"}
