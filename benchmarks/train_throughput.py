"""Training throughput of the DQN: the eager loop against the compiled step (``trainer.compile=true``).

    python benchmarks/train_throughput.py --quick --out bench_train.json   # CPU: B in {256, 4096}, N = 1,000
    python benchmarks/train_throughput.py --out tp.json                    # the full grid on the GPU
    python benchmarks/train_throughput.py --devices cpu cuda --out tp.json # ... and on the CPU too

Grid: B (``env.num_users``) in {256, 4096, 65536} x N (``env.n_items``) in {1000, 10000}, the
default shop (K = 5) and the default DQN. A step is what ``python train.py`` does per step: one
environment step of B users (act, shop step, reset of finished rows, replay write, the episode
metrics) and one gradient step on ``agent.batch_size`` = 512 replayed transitions, so
``user_steps_per_s = B * steps_per_s``. Modes: ``eager`` (:func:`rlrec.train.loop.train_steps`, the
reference) and ``compiled`` (:class:`rlrec.train.compiled.TrainStep`, torch.compile with
``trainer.compile_mode=auto``: CUDA graphs on CUDA, inductor on CPU).

At each point both modes are built, run past ``learning_starts`` and compiled (``compile_s``: the
compiled mode's warm-up, not timed further), then timed in alternating rounds (eager, compiled,
eager, ...) so that the load of a shared machine falls on both alike; a row holds the median
round, and ``speedup`` the compiled/eager ratio of the medians.

On CUDA each mode is also run for at least 3 s while two things watch the GPU: torch.profiler
(``gpu_busy``: the kernels' summed device time over the wall time; kernels on one stream do not
overlap) and ``nvidia-smi`` (``gpu_util``: NVML's utilisation, the share of time a kernel was
running, averaged over samples every 100 ms). Prints a table and writes JSON rows
``{"device", "B", "N", "mode", "user_steps_per_s", "steps_per_s", "speedup", "compile_s",
"gpu_busy", "gpu_util"}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable

import torch

from rlrec.agents.base import AgentSpec
from rlrec.agents.dqn import DQNAgent
from rlrec.config import env_preset
from rlrec.sim.env import Shop
from rlrec.train.compiled import TrainStep
from rlrec.train.loop import EpisodeTracker, train_steps

MODES = ("eager", "compiled")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_stepper(mode: str, device: str, b: int, n: int, seed: int = 0) -> tuple[Callable[[int], None], Shop]:
    """``run(k)``: k more training steps in ``mode``, on a fresh default shop and DQN."""
    shop = Shop(env_preset("default", device=device, num_users=b, n_items=n))
    shop.reset(seed=seed)
    agent = DQNAgent(AgentSpec.from_shop(shop), seed=seed, device=str(shop.device))
    tracker = EpisodeTracker(b, shop.device)
    if mode == "compiled":
        step = TrainStep(shop, agent, tracker)

        def run(k: int) -> None:
            for _ in range(k):
                step()

        return run, shop
    done = [0]

    def run(k: int) -> None:  # the eager loop, as train.py runs it (without the logging)
        train_steps(shop, agent, done[0] + k, on_step=lambda _, __, result: tracker.add(result), start=done[0])
        done[0] += k

    return run, shop


def gpu_watch(run: Callable[[int], None], shop: Shop, steps: int) -> tuple[float, float | None]:
    """(profiler busy fraction, mean NVML utilisation or None) over at least 3 s of ``run``."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    run(steps)
    _sync(shop.device)
    rounds = max(1, int(3.0 / max(time.perf_counter() - t0, 1e-6)))
    smi = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
        smi = subprocess.Popen([*query, "-i", str(shop.device.index or 0)], stdout=subprocess.PIPE, text=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        run(steps * rounds)
        _sync(shop.device)
        wall = time.perf_counter() - t0
    util = None
    if smi is not None:
        smi.terminate()
        samples = [float(line) for line in smi.communicate()[0].split() if line.strip().replace(".", "").isdigit()]
        util = statistics.mean(samples) / 100 if samples else None
    kernel_us = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type == DeviceType.CUDA)
    return kernel_us / 1e6 / wall, util


def measure(device: str, b: int, n: int, repeats: int, min_time: float, modes: tuple[str, ...]) -> list[dict]:
    torch._dynamo.reset()  # a fresh compile per grid point: dynamo's recompile limit is per process
    steppers, compile_s = {}, {}
    for mode in modes:
        run, shop = make_stepper(mode, device, b, n)
        warm = -(-DQNAgent.Config().learning_starts // b) + 3  # past learning_starts: every graph compiled
        t0 = time.perf_counter()
        run(warm)
        _sync(shop.device)
        compile_s[mode] = time.perf_counter() - t0
        steppers[mode] = (run, shop)
    # Steps per round: enough for min_time in the slowest mode.
    per_step = []
    for run, shop in steppers.values():
        t0 = time.perf_counter()
        run(2)
        _sync(shop.device)
        per_step.append((time.perf_counter() - t0) / 2)
    steps = max(2, int(min_time / max(per_step)))
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode, (run, shop) in steppers.items():
            t0 = time.perf_counter()
            run(steps)
            _sync(shop.device)
            rates[mode].append(steps / (time.perf_counter() - t0))
    rows = []
    for mode, (run, shop) in steppers.items():
        rate = statistics.median(rates[mode])
        busy, util = gpu_watch(run, shop, steps) if shop.device.type == "cuda" else (None, None)
        rows.append(
            {
                "device": device,
                "B": b,
                "N": n,
                "mode": mode,
                "user_steps_per_s": b * rate,
                "steps_per_s": rate,
                "speedup": rate / statistics.median(rates["eager"]) if "eager" in rates else None,
                "compile_s": compile_s[mode] if mode == "compiled" else None,
                "gpu_busy": busy,
                "gpu_util": util,
            }
        )
    return rows


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU-sized: B in {256, 4096}, N = 1000")
    parser.add_argument("--out", default="bench_train.json", help="where to write the JSON rows")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per mode (alternating)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per round in the slower mode")
    parser.add_argument("--devices", nargs="*", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--batch", nargs="*", type=int, default=None, help="B values (overrides the grid)")
    parser.add_argument("--items", nargs="*", type=int, default=None, help="N values (overrides the grid)")
    args = parser.parse_args()

    devices = args.devices or (["cuda"] if torch.cuda.is_available() else ["cpu"])
    batches = args.batch or ([256, 4096] if args.quick else [256, 4096, 65_536])
    items = args.items or ([1000] if args.quick else [1000, 10_000])
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    header = f"{'device':>8} {'B':>7} {'N':>7} {'mode':>9} {'user-steps/s':>14} {'steps/s':>9} {'speedup':>8}"
    print(f"{header} {'compile s':>10} {'gpu busy':>9} {'gpu util':>9}")
    for device in devices:
        for n in items:
            for b in batches:
                for row in measure(device, b, n, args.repeats, args.min_time, tuple(args.modes)):
                    rows.append(row)
                    print(
                        f"{device:>8} {b:>7} {n:>7} {row['mode']:>9} {row['user_steps_per_s']:>14,.0f} "
                        f"{row['steps_per_s']:>9,.1f} {_fmt(row['speedup'], 8, 2)} {_fmt(row['compile_s'], 10, 1)} "
                        f"{_fmt(row['gpu_busy'], 9, 2)} {_fmt(row['gpu_util'], 9, 2)}",
                        flush=True,
                    )
                with open(args.out, "w") as f:  # after every point: a killed run keeps what it measured
                    json.dump(rows, f, indent=1)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
