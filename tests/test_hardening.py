"""Bad input and faults: one clear error line and exit 2, or a correct run; never a traceback, never a wrong result.

The bad-input table is checked by the general mechanism (every schema field has a type and
a rule, checked before anything runs), so each row stands for a class of mistakes.
"""

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from test_workflow import FAST, run

from rlrec.train.run import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint

TRAIN_CASES = [
    # agent hyperparameters: type, finiteness, rule, unknown key, choice, cross-field with the shop
    ("agent.lr=inf", "agent.lr = inf is invalid: it must be a finite number"),
    ("agent.lr=fast", "Value 'fast' of type 'str' could not be converted to Float"),
    ("agent.gamma=1.5", "agent.gamma = 1.5 is invalid: it must be >= 0 and <= 1"),
    ("agent.exploration_steps=-1", "agent.exploration_steps = -1 is invalid: it must be an integer >= 0"),
    ("agent.buffer_size=10", "agent.buffer_size = 10 is invalid: it must be >= env.num_users * agent.n_step = 32"),
    ("agent.n_step=0", "agent.n_step = 0 is invalid: it must be an integer >= 1"),
    ("agent.head=foo", "agent.head = 'foo' is invalid: it must be one of 'dot', 'mlp', 'tabular'"),
    ("+agent.lrr=0.1", "unknown agent field(s) ['lrr']"),
    ("agent=tabular_q", "this agent needs the satisfaction observed (env.observe_satisfaction=true); use env=tiny"),
    ("agent=bandit agent.gamma=0.9", "agent.gamma = 0.9 is invalid: it must be 0 for the bandit"),
    ("agent=nope", "Could not find 'agent/nope'"),
    # trainer, logger, top level
    ("trainer.eval_baselines=[nope]", "trainer.eval_baselines = ['nope'] names unknown baseline(s) ['nope']"),
    ("trainer.env_steps=0", "trainer.env_steps = 0 is invalid: it must be an integer >= 1"),
    ("trainer.log_every=-3", "trainer.log_every = -3 is invalid: it must be an integer >= 1"),
    ("trainer.resume=/nonexistent/run", "checkpoint /nonexistent/run does not exist"),
    ("logger.log_dir=''", "logger.log_dir = '' is invalid"),
    ("seed=-1", "seed = -1 is invalid: it must be an integer >= 0"),
    # the shop
    ("env.num_users=0", "env.num_users = 0 is invalid: it must be an integer >= 1"),
    ("env.leave_prob_happy=nan", "env.leave_prob_happy = nan is invalid: it must be a finite number"),
    ("env.slate_size=500", "env.slate_size = 500 is invalid: it must be at most n_items = 60"),
    ("env=nope", "Could not find 'env/nope'"),
]

EVALUATE_CASES = [
    ("eval_users=0", "eval_users = 0 is invalid: it must be an integer >= 1"),
    ("baselines=[nope]", "baselines = ['nope'] names unknown baseline(s) ['nope']"),
    ("run_dir=/nonexistent", "run_dir /nonexistent is not a directory"),
    ("env=default run_dir=.", "evaluate.py takes env=obd"),
    ("env=obd ope.n_boot=0", "ope.n_boot = 0 is invalid: it must be an integer >= 1"),
    ("+eval_userz=5", "unknown key(s) ['eval_userz']"),
]


def _one_error_line(proc, message):
    """Exit 2, exactly one line on stderr, starting with ``error:`` and holding ``message``; no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    problems = []
    if proc.returncode != 2:
        problems.append(f"exit {proc.returncode}")
    if len(lines) != 1 or not lines[0].startswith("error: "):
        problems.append(f"stderr is not one error line: {lines}")
    if message not in proc.stderr:
        problems.append(f"{message!r} not in {proc.stderr!r}")
    if "Traceback" in proc.stdout + proc.stderr:
        problems.append("a traceback")
    return problems


def test_every_bad_input_is_one_clear_error_line_and_nothing_is_written(tmp_path):
    def attempt(case):
        script, args, message = case
        run_dir = tmp_path / re.sub(r"\W+", "_", f"{script}_{args}")
        fast = [a for a in FAST if not (a.startswith("agent.") and "agent=" in args)]  # another agent's keys
        extra = [*fast, f"hydra.run.dir={run_dir}"] if script == "train.py" else []
        proc = run(script, *extra, *args.split(), cwd=tmp_path, check=False)
        problems = _one_error_line(proc, message)
        if run_dir.exists() and any(run_dir.iterdir()):
            problems.append(f"wrote {sorted(p.name for p in run_dir.iterdir())}")
        if "base_" in proc.stderr:
            problems.append("lists internal schemas")
        return (script, args, problems)

    cases = [("train.py", a, m) for a, m in TRAIN_CASES] + [("evaluate.py", a, m) for a, m in EVALUATE_CASES]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, cases))
    failures = [f"{script} {args}: {problems}" for script, args, problems in results if problems]
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "outputs").exists(), "evaluate.py left an outputs/ folder"


# ----------------------------------------------------------------------------- resume
@pytest.fixture
def short_run(tmp_path):
    run_dir = tmp_path / "run"
    run("train.py", *FAST, "trainer.env_steps=20", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    return run_dir


def _snapshot(run_dir):
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_refused_resume_leaves_the_run_directory_untouched(short_run, tmp_path):
    before = _snapshot(short_run)
    proc = run(
        "train.py",
        *FAST,
        "trainer.env_steps=40",
        "agent.lr=0.5",
        "agent.gamma=0.0",
        f"hydra.run.dir={short_run}",
        cwd=tmp_path,
        check=False,
    )
    assert not _one_error_line(
        proc, "was written with another run config (agent.gamma: 0.95 -> 0.0; agent.lr: 0.001 -> 0.5)"
    ), proc.stderr
    assert "trainer.allow_config_change=true" in proc.stderr
    assert _snapshot(short_run) == before

    proc = run("train.py", *FAST, "trainer.env_steps=10", f"hydra.run.dir={short_run}", cwd=tmp_path, check=False)
    assert not _one_error_line(proc, "already holds 20 environment steps, more than trainer.env_steps = 10"), (
        proc.stderr
    )
    assert _snapshot(short_run) == before


def test_a_config_change_on_resume_is_accepted_only_when_asked_and_is_recorded(short_run, tmp_path):
    run(
        "train.py",
        *FAST,
        "trainer.env_steps=30",
        "agent.lr=0.0005",
        "trainer.allow_config_change=true",
        f"hydra.run.dir={short_run}",
        cwd=tmp_path,
    )
    saved = load_checkpoint(short_run / CHECKPOINT_NAME)
    assert saved["env_step"] == 30 and saved["config_changes"] == ["agent.lr: 0.001 -> 0.0005"]
    assert saved["config"]["agent"]["lr"] == 0.0005
    assert saved["agent"]["transitions_seen"] == 30 * 32  # the counters continue, consistent with env_step
    assert "config changes accepted on resume: agent.lr" in (short_run / "train.log").read_text()


def test_tensorboard_continues_after_a_resume_and_orphans_are_removed(short_run, tmp_path):
    from rlrec.eval.sim_report import read_scalars

    orphan = short_run / f".{CHECKPOINT_NAME}.k1ll3d.tmp"
    orphan.write_bytes(b"half a checkpoint")
    run("train.py", *FAST, f"hydra.run.dir={short_run}", cwd=tmp_path)  # FAST: 40 steps
    assert not orphan.exists()
    steps = [step for step, _ in read_scalars(short_run / "tb", "charts/epsilon")]
    assert steps == [320, 640, 960, 1280]  # every 10 steps x 32 users, before and after the resume
    log = (short_run / "train.log").read_text()
    assert "resumed from" in log and "final evaluation" in log and "removed .checkpoint.pt.k1ll3d.tmp" in log


# ----------------------------------------------------------------------------- faults
def test_a_full_disk_keeps_the_last_checkpoint_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"format": "x", "step": 1})

    def full_disk(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
            "data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        CheckpointError,
        match=r"could not write the checkpoint .*file write failed\); the previous "
        r"checkpoint is intact",
    ):
        save_checkpoint(path, {"format": "x", "step": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


def test_an_unwritable_directory_is_named(tmp_path, monkeypatch, capsys):
    import tempfile

    from rlrec.cli import friendly_errors

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(SystemExit) as exit_info, friendly_errors():
        save_checkpoint(tmp_path / CHECKPOINT_NAME, {"format": "x"})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not write the checkpoint") and "Permission denied" in err
    assert len(err.splitlines()) == 1


def test_a_diverging_run_stops_with_the_cause(tmp_path):
    run_dir = tmp_path / "run"
    proc = run("train.py", *FAST, "agent.lr=1e30", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    assert not _one_error_line(proc, "training diverged"), proc.stderr
    assert "lower agent.lr" in proc.stderr
    if (run_dir / CHECKPOINT_NAME).exists():  # whatever was kept is finite
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)["agent"]["q"]
        assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    assert not (run_dir / "train_eval.json").exists()


def test_evaluate_writes_only_its_report(short_run, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    proc = run("evaluate.py", f"run_dir={short_run}", "eval_users=32", cwd=work)
    assert list(work.iterdir()) == [], "evaluate.py wrote into the working directory"
    assert "[tensorboard]" not in proc.stdout + proc.stderr
    report = json.loads((short_run / "eval.json").read_text())
    assert report["policies"]["trained (dqn)"]["episodic_return"]["n"] == 32
    assert Path(short_run / "eval.md").is_file()
