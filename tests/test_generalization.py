"""The generalisation workflow: train.py with content, new items and a validation shop (best.pt), evaluate.py
on held-out users and shifted shops, resume, a changed content file, sweeps, bad input."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from test_hardening import _one_error_line
from test_workflow import FAST, run

from rlrec.eval.sim_report import read_scalars
from rlrec.train.run import BEST_NAME, CHECKPOINT_NAME, load_checkpoint

CONTENT = ["env.content_dim=8", "env.holdout_items=0.2"]
VAL = ["trainer.val_every=10", "trainer.val_users=32"]


@pytest.fixture(scope="module")
def content_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("content_run")
    run("train.py", *FAST, *CONTENT, *VAL, "agent.id_dropout=0.2", f"hydra.run.dir={run_dir}", cwd=run_dir)
    return run_dir


def test_training_validates_keeps_the_best_checkpoint_and_opens_the_catalog_at_the_end(content_run):
    saved = load_checkpoint(content_run / CHECKPOINT_NAME)
    curve = read_scalars(content_run / "tb", "eval/val_return")
    assert [step for step, _ in curve] == [320, 640, 960, 1280]  # every 10 steps x 32 users
    best_value = max(value for _, value in curve)
    best_step = [step for step, value in curve if value == best_value][0] // 32
    assert saved["validation"]["step"] == best_step
    assert saved["validation"]["return"] == pytest.approx(best_value)
    best = load_checkpoint(content_run / BEST_NAME)
    assert best["env_step"] == best_step and best["catalog_fingerprint"] == saved["catalog_fingerprint"]
    known = saved["agent"]["q"]["items.known"]
    assert int(known.sum()) == 48  # 60 items, 12 held out and never shown in training
    assert saved["agent"]["q"]["items.item_content"].shape == (60, 8)
    results = json.loads((content_run / "train_eval.json").read_text())
    trained = results["trained"]
    assert trained["new_item_share"]["mean"] >= 0 and trained["new_item_ctr"]["n"] == 64  # the catalog was opened
    assert "best validation return" in (content_run / "train.log").read_text()


def test_evaluate_reports_new_items_and_the_gap_on_other_shops(content_run, tmp_path):
    proc = run(
        "evaluate.py",
        f"run_dir={content_run}",
        "eval_users=64",
        "shifts=[heldout_users,shift_mix,shift_price,shift_hype]",
        f"out_dir={tmp_path}",
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["new_items"] == {"count": 12, "share_of_catalog": 0.2, "arrived_in_training": 0}
    general = report["generalization"]
    assert list(general["shops"]) == ["heldout_users", "shift_mix", "shift_price", "shift_hype"]
    train_return = report["policies"]["trained (dqn)"]["episodic_return"]
    for name, policies in general["shops"].items():
        assert list(policies) == ["trained (dqn)", "random", "myopic_oracle"]
        gap = general["gaps"][name]["trained (dqn)"]
        there = policies["trained (dqn)"]["episodic_return"]
        assert gap["mean"] == pytest.approx(there["mean"] - train_return["mean"])
        assert gap["ci95"] == pytest.approx(np.hypot(there["ci95"], train_return["ci95"]))
    md = (tmp_path / "eval.md").read_text()
    assert "## New items" in md and "| trained (dqn) |" in md and "## Generalisation" in md
    assert re.search(r"\| shift_price \| [\d.]+ ± [\d.]+ \([+-][\d.]+ ± [\d.]+, [+-]\d+%\)", md), md
    assert "## Generalisation" in proc.stdout


def test_resuming_a_validated_run_is_exact(tmp_path):
    args = [*FAST, *CONTENT, *VAL, "agent.id_dropout=0.2", "agent.dropout=0.1", "env.new_item_rate=0.3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run("train.py", *args, f"hydra.run.dir={straight}", cwd=tmp_path)
    run("train.py", *args, "trainer.env_steps=20", f"hydra.run.dir={split}", cwd=tmp_path)
    run("train.py", *args, f"hydra.run.dir={split}", cwd=tmp_path)  # resumes at 20
    for name in (CHECKPOINT_NAME, BEST_NAME):
        a, b = load_checkpoint(straight / name), load_checkpoint(split / name)
        assert a["env_step"] == b["env_step"] and a["validation"] == b["validation"]
        assert a["shop"]["catalog_step"] == b["shop"]["catalog_step"]
        for key, value in a["agent"]["q"].items():
            assert torch.equal(value, b["agent"]["q"][key]), key
    assert load_checkpoint(straight / CHECKPOINT_NAME)["shop"]["catalog_step"] == 40
    assert read_scalars(straight / "tb", "eval/val_return") == read_scalars(split / "tb", "eval/val_return")


def test_a_changed_content_file_is_refused(tmp_path):
    path = tmp_path / "content.npy"
    np.save(path, np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32))
    run_dir = tmp_path / "run"
    args = [*FAST, "trainer.env_steps=10", f"env.content_path={path}", "env.content_dim=4"]
    run("train.py", *args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    np.save(path, np.random.default_rng(1).normal(size=(60, 4)).astype(np.float32))
    for script, extra in (("evaluate.py", [f"run_dir={run_dir}"]), ("train.py", [*args, "trainer.env_steps=20"])):
        before = (run_dir / CHECKPOINT_NAME).read_bytes()
        proc = run(script, *extra, f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
        assert not _one_error_line(proc, f"the content file {path} changed"), (script, proc.stderr)
        assert (run_dir / CHECKPOINT_NAME).read_bytes() == before


def test_a_sweep_over_content_informativeness(tmp_path):
    sweep = tmp_path / "sweep"
    args = [*FAST, *CONTENT, "trainer.env_steps=10", "trainer.checkpoint_every=0", "trainer.eval_users=16"]
    run(
        "train.py",
        "-m",
        *args,
        "env.content_noise=0.5,100",
        "agent.use_content=true,false",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    results = [json.loads((sweep / str(i) / "train_eval.json").read_text()) for i in range(4)]
    assert all("new_item_ctr" in r["trained"] for r in results)


BAD = [
    (
        "train.py",
        "trainer.val_shop=nope trainer.val_every=5",
        "trainer.val_shop = 'nope' names unknown shop(s) ['nope']",
    ),
    (
        "train.py",
        "env.new_item_rate=1",
        "env.new_item_rate = 1.0 is invalid: it must be 0 unless env.holdout_items > 0",
    ),
    ("train.py", "env.holdout_items=0.99", "env.holdout_items = 0.99 is invalid: it must be small enough"),
    ("train.py", "agent.id_dropout=1", "agent.id_dropout = 1.0 is invalid: it must be >= 0 and < 1"),
    ("train.py", "agent.weight_decay=-1", "agent.weight_decay = -1.0 is invalid: it must be >= 0"),
    ("evaluate.py", "shifts=[nope] run_dir=.", "shifts = ['nope'] names unknown shop(s) ['nope']"),
    ("evaluate.py", "env=obd shifts=[shift_mix]", "shifts = ['shift_mix'] applies to a run evaluated in the simulator"),
]


def test_bad_generalisation_settings_give_one_clear_error_and_write_nothing(tmp_path):
    def attempt(case):
        script, args, message = case
        run_dir = tmp_path / re.sub(r"\W+", "_", f"{script}_{args}")
        extra = [*FAST, f"hydra.run.dir={run_dir}"] if script == "train.py" else []
        proc = run(script, *extra, *args.split(), cwd=tmp_path, check=False)
        problems = _one_error_line(proc, message)
        if run_dir.exists() and any(run_dir.iterdir()):
            problems.append(f"wrote {sorted(p.name for p in run_dir.iterdir())}")
        return script, args, problems

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f"{s} {a}: {p}" for s, a, p in pool.map(attempt, BAD) if p]
    assert not failures, "\n".join(failures)


def test_the_generalisation_benchmark_runs_every_arm_in_every_shop():
    """benchmarks/generalization.py at a toy size: every arm is judged in the same shops, the shop
    changes of --env reach every arm, and the tables hold a row per agent arm and yardstick."""
    from benchmarks.generalization import CATALOGS, format_tables, run, run_yardsticks, training_env

    small = {"dqn": {"embed_dim": 8, "hidden_dim": 16, "buffer_size": 64, "batch_size": 8, "learning_starts": 16}}
    results = run(
        ("dqn",), ("content", "id_only"), 1, 3, 16, 32, "cpu", content_dim=4, overrides=small, quiet=True,
        env_overrides={"hype_quality_corr": 0.0},
    )  # fmt: skip
    shops = [*CATALOGS, "heldout_users", "shift_hype", "shift_mix", "shift_price"]
    for arm in ("content", "id_only"):
        assert list(results["dqn"][arm]["shops"]) == shops
        assert results["dqn"][arm]["shops"]["new items only"]["new_item_share"]["mean"] == 1.0  # every slate: new items
    env = training_env("id_only", 4, None, 0.2, "cpu", {"hype_quality_corr": 0.0})
    assert env.hype_quality_corr == 0.0 and env.content_dim == 0 and env.holdout_items == 0.2
    yardsticks = run_yardsticks(("quality_aware",), env, 32)
    assert list(yardsticks["quality_aware"]) == shops
    tables = format_tables(results, yardsticks)
    assert "| quality_aware | (privileged) |" in tables and "| dqn | id_only |" in tables
    assert "share of the quality_aware yardstick" in tables
