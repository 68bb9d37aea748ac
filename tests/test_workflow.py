"""The workflow users live in: train.py, evaluate.py, TensorBoard, checkpoints, resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlrec.data.obd import load_obd
from rlrec.eval.sim_report import evaluate_run, read_scalars
from rlrec.train.run import FORMAT, CheckpointError, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
# Small and fast: a 60-item shop, 32 users, a short DQN run.
FAST = [
    "env.n_items=60",
    "env.num_users=32",
    "agent.learning_starts=64",
    "agent.batch_size=32",
    "agent.buffer_size=4096",
    "agent.exploration_steps=2000",
    "agent.embed_dim=8",
    "agent.hidden_dim=16",
    "trainer.env_steps=40",
    "trainer.log_every=10",
    "trainer.checkpoint_every=10",
    "trainer.eval_users=64",
    "trainer.progress=false",
]


def run(script, *args, cwd=None, check=True, wait=True):
    cmd = [sys.executable, str(ROOT / script), *args]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    run("train.py", *FAST, f"hydra.run.dir={run_dir}", cwd=run_dir)
    return run_dir


def test_train_writes_checkpoint_events_and_evaluation(trained_run):
    assert (trained_run / "checkpoint.pt").is_file()
    assert (trained_run / ".hydra" / "config.yaml").is_file()
    state = load_checkpoint(trained_run / "checkpoint.pt")
    assert state["env_step"] == 40 and "buffer" in state["agent"] and "optimizer" in state["agent"]
    results = json.loads((trained_run / "train_eval.json").read_text())
    assert set(results) == {"trained", "myopic_oracle"}
    assert results["trained"]["episodic_return"]["n"] == 64 and results["trained"]["episodic_return"]["mean"] > 0
    assert results["myopic_oracle"]["ctr"]["mean"] > 0.5


def test_tensorboard_has_the_documented_tags(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained_run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "charts/episodic_return",
        "charts/episode_length",
        "charts/ctr",
        "charts/purchase_rate",
        "charts/avg_rating",
        "charts/epsilon",
        "charts/SPS",
        "losses/td_loss",
        "losses/q_values",
        "eval/episodic_return",
        "eval/ctr",
        "eval/myopic_oracle/episodic_return",
    ):
        assert tag in tags, tag
    curve = read_scalars(trained_run / "tb", "charts/epsilon")
    assert [step for step, _ in curve] == [320, 640, 960, 1280]  # every 10 steps x 32 users
    assert curve[0][1] > curve[-1][1]  # epsilon decays
    assert (trained_run / "tb" / "hparams").is_dir()


def test_evaluate_writes_the_report(trained_run, tmp_path):
    proc = run(
        "evaluate.py",
        f"run_dir={trained_run}",
        "eval_users=128",
        f"out_dir={tmp_path}",
        f"hydra.run.dir={tmp_path}/hydra",
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / "eval.json").read_text())
    labels = list(report["policies"])
    assert labels == ["trained (dqn)", "random", "myopic_oracle"]
    for metrics in report["policies"].values():
        assert set(metrics) >= {
            "episodic_return",
            "episode_length",
            "ctr",
            "purchase_rate",
            "avg_rating",
            "revenue_per_session",
            "coverage",
        }
        assert metrics["episodic_return"]["n"] == 128 and metrics["episodic_return"]["ci95"] > 0
    oracle, rand = report["policies"]["myopic_oracle"], report["policies"]["random"]
    assert oracle["ctr"]["mean"] > rand["ctr"]["mean"]
    assert rand["coverage"]["mean"] > oracle["coverage"]["mean"]
    md = (tmp_path / "eval.md").read_text()
    assert "| myopic_oracle |" in md and "±" in md
    for png in ("policies.png", "learning_curve.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trained (dqn)" in proc.stdout


def test_evaluation_uses_common_random_numbers(trained_run, tmp_path):
    a = evaluate_run(run_dir=str(trained_run), eval_users=64, out_dir=tmp_path / "a", baselines=("random",))
    b = evaluate_run(run_dir=str(trained_run), eval_users=64, out_dir=tmp_path / "b", baselines=("random",))
    assert a["policies"] == b["policies"]


def test_tiny_shop_report_has_exact_values(tmp_path):
    run_dir = tmp_path / "tiny"
    run(
        "train.py",
        "experiment=tiny_oracle",
        "agent=tabular_q",
        "trainer.env_steps=300",
        "env.num_users=512",
        "trainer.progress=false",
        "trainer.eval_users=256",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    report = evaluate_run(run_dir=str(run_dir), eval_users=256, out_dir=tmp_path / "eval")
    oracle = report["oracle"]
    assert oracle["v_star"] >= oracle["policy_value"] > 0.9 * oracle["v_star"]
    assert abs(oracle["gap"] - (oracle["v_star"] - oracle["policy_value"])) < 1e-12
    assert "Exact values" in (tmp_path / "eval" / "eval.md").read_text()


def _params(run_dir):
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    return torch.cat([v.flatten().float() for v in state["agent"]["q"].values()])


def test_resume_after_sigkill_is_exact(tmp_path):
    args = FAST[:-4] + [
        "trainer.env_steps=80",
        "trainer.log_every=10",
        "trainer.checkpoint_every=20",
        "trainer.eval_users=16",
        "trainer.progress=false",
    ]
    straight = tmp_path / "straight"
    run("train.py", *args, f"hydra.run.dir={straight}", cwd=tmp_path)

    killed = tmp_path / "killed"
    proc = run("train.py", *args, f"hydra.run.dir={killed}", cwd=tmp_path, wait=False)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").exists():
        assert proc.poll() is None, "training ended before the first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    interrupted_at = load_checkpoint(killed / "checkpoint.pt")["env_step"]
    assert 0 < interrupted_at < 80, "the kill must land mid-training"

    run("train.py", *args, f"hydra.run.dir={killed}", cwd=tmp_path)  # same run directory: resumes
    assert load_checkpoint(killed / "checkpoint.pt")["env_step"] == 80
    assert torch.equal(_params(straight), _params(killed))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "override, message",
    [
        ("agent.lrr=1", "Key 'lrr' not in 'DQNConfig'"),
        ("agent.lr=fast", "Value 'fast' of type 'str' could not be converted to Float"),
        ("env.slate_size=500", "error: env.slate_size = 500 is invalid: it must be at most n_items = 60"),
        ("agent.lr=-0.001", "error: agent.lr = -0.001 is invalid: it must be > 0"),
        ("env.device=cuda:7", "error: device = 'cuda:7'"),
    ],
)
def test_bad_overrides_give_one_clear_error(tmp_path, override, message):
    proc = run("train.py", *FAST, override, f"hydra.run.dir={tmp_path}", cwd=tmp_path, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in output, output
    assert "Traceback" not in output, output


def test_train_on_the_fitted_shop_then_evaluate_on_the_logs(tmp_path):
    """``train.py env=obd`` trains in the shop fitted to the logs; ``evaluate.py env=obd run_dir=...``
    then estimates the trained agent's click rate from the logs, beside the baselines."""
    run_dir = tmp_path / "run"
    run(
        "train.py",
        "env=obd",
        "env.num_users=32",
        "trainer.env_steps=30",
        "trainer.eval_users=64",
        "trainer.progress=false",
        "agent.learning_starts=64",
        "agent.batch_size=32",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    proc = run("evaluate.py", "env=obd", f"run_dir={run_dir}", "ope.n_boot=100", f"out_dir={tmp_path}/ev", cwd=tmp_path)
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    trained = report["policies"]["trained (dqn)"]
    assert set(trained) == {"ips", "snips", "dm", "dr"} and "| trained (dqn) |" in proc.stdout
    for e in trained.values():
        assert e["ci_low"] <= e["value"] <= e["ci_high"]


def test_evaluating_a_simulated_run_on_logs_is_refused(trained_run, tmp_path):
    proc = run(
        "evaluate.py", "env=obd", f"run_dir={trained_run}", f"hydra.run.dir={tmp_path}", cwd=tmp_path, check=False
    )
    assert proc.returncode == 2 and "needs a run trained on the shop fitted to them" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_on_logged_data(tmp_path):
    """``python evaluate.py env=obd``: every policy, every estimator, an interval around each value."""
    proc = run(
        "evaluate.py", "env=obd", "env.logs_campaign=women", "ope.n_boot=200", f"out_dir={tmp_path}", cwd=tmp_path
    )
    assert "| random |" in proc.stdout and "| click_model_greedy |" in proc.stdout
    report = json.loads((tmp_path / "eval.json").read_text())
    assert (tmp_path / "eval.md").is_file() and (tmp_path / "policies.png").stat().st_size > 1000
    logs = report["evaluation_logs"]
    assert logs["rows"] == 10_000 and logs["clicks"] > 0
    policies = report["policies"]
    assert set(policies) == {"random", "popular", "click_model_greedy", "bts_behaviour"}
    for label in ("random", "popular", "click_model_greedy"):
        assert set(policies[label]) == {"ips", "snips", "dm", "dr"}
        for e in policies[label].values():
            assert e["ci_low"] <= e["value"] <= e["ci_high"], (label, e)
    # The random logs were logged by the uniform policy: its IPS is their click rate, exactly.
    assert policies["random"]["ips"]["value"] == pytest.approx(logs["click_rate"], abs=1e-12)
    assert policies["bts_behaviour"]["on_policy"]["value"] == pytest.approx(
        float(load_obd(policy="bts", campaign="women", with_affinity=False).click.double().mean()), abs=1e-12
    )
    proc = run(
        "evaluate.py",
        "env=obd",
        f"env.logs_path={tmp_path}/no_dataset",
        f"hydra.run.dir={tmp_path}/h",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "is not a directory" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("evaluate.py", "env=obd", "run_dir=somewhere", f"hydra.run.dir={tmp_path}/h", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path):
    proc = run("evaluate.py", f"run_dir={tmp_path}/nope", f"hydra.run.dir={tmp_path}/h", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = run("evaluate.py", f"checkpoint={bad}", f"hydra.run.dir={tmp_path}/h", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is corrupt" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resuming_with_another_env_config_is_refused(trained_run, tmp_path):
    proc = run(
        "train.py",
        *FAST,
        "env.n_items=70",
        f"trainer.resume={trained_run}",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert "was written with another run config (env.n_items: 60 -> 70)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"format": FORMAT, "x": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"format": FORMAT, "x": 2})
    assert load_checkpoint(path)["x"] == 1  # the old checkpoint survives a crash mid-write
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


@pytest.mark.slow
def test_default_training_beats_the_myopic_oracle(tmp_path):
    """``python train.py`` with its defaults: progress bar, events, checkpoint, and DQN > myopic oracle."""
    start = time.time()
    proc = run("train.py", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert time.time() - start < 300
    assert "step/s" in proc.stderr or "step/s" in proc.stdout  # tqdm's bar
    assert (tmp_path / "checkpoint.pt").is_file() and list((tmp_path / "tb").glob("events.out.tfevents.*"))
    results = json.loads((tmp_path / "train_eval.json").read_text())
    dqn, myopic = results["trained"]["episodic_return"], results["myopic_oracle"]["episodic_return"]
    assert dqn["mean"] - dqn["ci95"] > myopic["mean"] + myopic["ci95"], results
