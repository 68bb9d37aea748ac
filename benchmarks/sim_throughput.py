"""Throughput of ``Shop.step`` with random slates: user-steps per second.

    python benchmarks/sim_throughput.py --quick --out bench_sim.json

Grid: B in {1, 256, 4096, 65536}, N in {1000, 10000, 100000}, K in {1, 10}, on every device
present (``--quick``: B in {256, 65536}, N = 10000, K in {1, 10}). Each row is the median
of ``--repeats`` timings. Slates are drawn before timing, so only the simulator is
measured; ``check_actions`` is off (it costs one host sync per step). Every point runs
eagerly and with ``env.compile=true`` (torch.compile of the transition; its warm-up is not
timed). Prints a table and writes JSON rows
``{"device", "B", "N", "K", "compile", "user_steps_per_s"}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rlrec.config import env_preset
from rlrec.sim.env import Shop, random_slates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device: str, b: int, n: int, k: int, compile: bool, repeats: int, min_time: float) -> float:
    torch._dynamo.reset()  # a fresh compile per grid point: dynamo's recompile limit is per process
    shop = Shop(
        env_preset("default", device=device, num_users=b, n_items=n, slate_size=k, check_actions=False, compile=compile)
    )
    g = torch.Generator(device=shop.device).manual_seed(0)
    slates = [random_slates(b, n, k, g) for _ in range(4)]
    for i in range(3):  # warm-up
        shop.step(slates[i % 4])
    _sync(shop.device)
    # steps per timing: enough to last min_time
    t0 = time.perf_counter()
    shop.step(slates[0])
    _sync(shop.device)
    steps = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6)))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            shop.step(slates[i % 4])
        _sync(shop.device)
        rates.append(b * steps / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run that still includes B=65536, N=10000, K=10")
    parser.add_argument("--out", default="bench_sim.json", help="where to write the JSON rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per timing")
    parser.add_argument("--devices", nargs="*", default=None, help="default: cpu, and cuda when present")
    parser.add_argument("--modes", nargs="*", default=["eager", "compile"], choices=["eager", "compile"])
    args = parser.parse_args()

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if args.quick:
        grid = [(b, 10_000, k) for b in (256, 65_536) for k in (1, 10)]
    else:
        grid = [(b, n, k) for b in (1, 256, 4096, 65_536) for n in (1000, 10_000, 100_000) for k in (1, 10)]
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'device':>8} {'B':>7} {'N':>7} {'K':>3} {'mode':>8} {'user-steps/s':>14}")
    for device in devices:
        for b, n, k in grid:
            for mode in args.modes:
                rate = measure(device, b, n, k, mode == "compile", args.repeats, args.min_time)
                rows.append(
                    {"device": device, "B": b, "N": n, "K": k, "compile": mode == "compile", "user_steps_per_s": rate}
                )
                print(f"{device:>8} {b:>7} {n:>7} {k:>3} {mode:>8} {rate:>14,.0f}", flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
