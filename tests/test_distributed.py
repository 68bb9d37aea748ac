"""Data-parallel training (trainer.distributed=true): torchrun and Hydra's submitit launcher, gloo on CPU."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import CUDA
from test_workflow import FAST, ROOT, run

from rlrec.eval.sim_report import read_scalars
from rlrec.train.distributed import RANK_SEED_STRIDE, World, quiet_rank_overrides
from rlrec.train.run import load_checkpoint

# FAST without its length: two ranks of 32 users each.
ARGS = [arg for arg in FAST if not arg.startswith("trainer.env_steps=")] + ["trainer.distributed=true"]


def torchrun(*args, cwd, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"torchrun {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def ranks(checkpoint):
    """Every rank's agent state in a checkpoint, rank 0 first."""
    return [checkpoint["agent"], *(entry["agent"] for entry in checkpoint.get("ranks", []))]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_ranks_train_one_network_rank0_writes_and_the_run_resumes(tmp_path):
    """torchrun --nproc_per_node=2: the ranks play their own users, keep identical networks through
    the updates, only rank 0 writes, and a resume restores both ranks exactly (the resumed run ends
    where the same run launched in one go by Hydra's submitit launcher ends)."""
    torchrun(*ARGS, "trainer.env_steps=20", cwd=tmp_path)  # into outputs/<date>/<time> of rank 0's clock

    # Rank 0 alone wrote: one run directory (rank 1 named none of its own), one TensorBoard run, one log.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    [run_dir] = tmp_path.glob("outputs/*/*")
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".hydra",
        "checkpoint.pt",
        "tb",
        "train.log",
        "train_eval.json",
    ]
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1
    log = (run_dir / "train.log").read_text()
    assert log.count("training dqn on 64 users x 20 steps (cpu, 2 ranks of 32 users)") == 1, log
    assert [step for step, _ in read_scalars(run_dir / "tb", "charts/epsilon")] == [640, 1280]  # users of both ranks

    saved = load_checkpoint(run_dir / "checkpoint.pt")
    assert saved["world_size"] == 2 and saved["env_step"] == 20
    rank0, rank1 = ranks(saved)
    assert rank0["updates"] == rank1["updates"] == 19
    assert same(rank0["q"], rank1["q"]) and same(rank0["q_target"], rank1["q_target"])
    assert same(rank0["optimizer"]["state"][0], rank1["optimizer"]["state"][0])
    assert not same(rank0["q"], rank0["q_target"])  # the updates moved the network (the target is its start)
    # ... each rank with its own users, replay and exploration
    users = "obs.user_features"
    assert not torch.equal(rank0["buffer"]["storage"][users], rank1["buffer"]["storage"][users])
    assert not torch.equal(saved["shop"]["state"]["interest"], saved["ranks"][0]["shop"]["state"]["interest"])
    assert not torch.equal(rank0["generator"], rank1["generator"])

    torchrun(*ARGS, "trainer.env_steps=40", f"hydra.run.dir={run_dir}", cwd=tmp_path)  # resumes at step 20
    assert "resumed from" in (run_dir / "train.log").read_text()
    resumed = load_checkpoint(run_dir / "checkpoint.pt")
    assert resumed["env_step"] == 40 and len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 2

    sweep = tmp_path / "sweep"  # the same 40 steps at once, two local tasks as SLURM would start them
    submitit = ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}"]
    run("train.py", "-m", *ARGS, "trainer.env_steps=40", *submitit, cwd=tmp_path)
    straight = load_checkpoint(sweep / "0" / "checkpoint.pt")
    assert straight["world_size"] == 2
    for a, b in zip(ranks(resumed), ranks(straight)):
        assert same(a["q"], b["q"]) and same(a["q_target"], b["q_target"])
        assert same(a["buffer"]["storage"], b["buffer"]["storage"]) and torch.equal(a["generator"], b["generator"])

    # One process cannot continue two ranks' run.
    proc = run("train.py", *ARGS[:-1], "trainer.env_steps=60", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "was written by 2 rank(s) and this run has 1" in proc.stderr, proc.stderr


def test_two_ranks_with_the_compiled_step(tmp_path):
    """trainer.compile=true under torchrun: the network's forward is compiled inside DistributedDataParallel's,
    and the gradients are still averaged (the ranks end with the same network)."""
    run_dir = tmp_path / "run"
    torchrun(*ARGS, "trainer.compile=true", "trainer.env_steps=20", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    rank0, rank1 = ranks(load_checkpoint(run_dir / "checkpoint.pt"))
    assert rank0["updates"] == rank1["updates"] == 19
    assert same(rank0["q"], rank1["q"]) and not same(rank0["q"], rank0["q_target"])


def test_distributed_needs_a_launcher_and_the_slurm_example_composes(tmp_path):
    proc = run("train.py", *ARGS, "trainer.env_steps=2", f"hydra.run.dir={tmp_path}/r", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "needs a launcher that starts one process per rank" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r" / "checkpoint.pt").exists()
    proc = run("train.py", "hydra/launcher=slurm_ddp", "trainer.distributed=true", "--cfg", "hydra", cwd=tmp_path)
    assert "SlurmLauncher" in proc.stdout and "tasks_per_node: 4" in proc.stdout


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_one_rank_on_cuda_with_nccl(tmp_path, device, compile):
    """torchrun with one rank on the GPU: NCCL, DistributedDataParallel around the Q network (and the
    compiled step under it); a machine with one GPU cannot run two NCCL ranks."""
    run_dir = tmp_path / "run"
    args = [*ARGS, "env.device=cuda", f"trainer.compile={str(compile).lower()}", "trainer.env_steps=20"]
    torchrun(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path, nproc=1)
    saved = load_checkpoint(run_dir / "checkpoint.pt")
    assert saved["world_size"] == 1 and saved["env_step"] == 20 and saved["agent"]["updates"] == 19


def test_ranks_other_than_0_are_quiet(monkeypatch):
    """torchrun's rank r > 0 gets Hydra overrides that keep it from writing a log or naming a run directory."""
    monkeypatch.setenv("RANK", "0")
    assert quiet_rank_overrides(["env=tiny"]) == []
    monkeypatch.setenv("RANK", "1")
    assert quiet_rank_overrides(["env=tiny"]) == [
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
        "hydra.run.dir=.",
    ]
    assert "hydra.run.dir=." not in quiet_rank_overrides(["hydra.run.dir=/runs/a"])  # the user's, shared by all
    assert quiet_rank_overrides(["-m", "seed=0,1"]) == []  # a sweep's launcher starts the ranks itself
    world = World(rank=2, size=4)
    assert world.seed(7) == 7 + 2 * RANK_SEED_STRIDE and not world.is_main and World().seed(7) == 7
