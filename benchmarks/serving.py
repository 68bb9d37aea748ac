"""Latency and throughput of the recommendation service, over HTTP, with every record checked in its store.

    python benchmarks/serving.py --quick --out bench_serving.json

For each catalog size N it exports a DQN with the default architecture (untrained: scoring
costs the same whatever the weights), starts the real service (``serve.py``, one uvicorn
worker, SQLite store) in a subprocess and drives it with ``concurrency`` httpx async clients,
each sending recommend requests back to back (random customers, histories and steps), for
``--seconds`` per point after a warm-up. Then every answered request gets its feedback (a
click or not, at a random position), and the store is read back: every answered decision
must be there with the items and propensities it was answered with, and every feedback event.

Grid: N in {1,000, 10,000, 100,000} x concurrency in {1, 32} (``--quick``: N in {1,000,
10,000}, 3 s per point). ``--baseline`` first measures the same clients against a FastAPI
endpoint that does nothing (rows with ``"N": 0``): the ceiling of this machine and client at
that moment, which the service's own rows are to be read against.

Prints a table and writes JSON rows ``{"N", "concurrency", "p50_ms", "p95_ms", "p99_ms",
"rps", "errors"}`` (latency of /v1/recommend as the client sees it, answered
recommendations per second), plus what bounds them: CPU milliseconds per request
spent by the server process and by the client, the server's mean scoring batch, its scoring
and commit times, and the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rlrec.agents.base import AgentSpec
from rlrec.agents.dqn import DQNAgent
from rlrec.config import ExplorationConfig, env_preset
from rlrec.data.served import load_served
from rlrec.serve.export import export_agent
from rlrec.serve.process import ServiceProcess, free_port
from rlrec.serve.traffic import run_loop
from rlrec.sim.env import Shop


def baseline_app():
    """A FastAPI app whose recommend endpoint reads the body and answers a constant (``--baseline``)."""
    app = FastAPI()

    @app.post("/v1/recommend")
    async def recommend(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"request_id": "0", "model_version": "none", "items": [0], "propensities": [1.0]})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app


def run_baseline(concurrencies: list[int], seconds: float, pool: Any) -> list[dict]:
    import subprocess

    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "benchmarks.serving:baseline_app", "--factory", "--port", str(port),
           "--log-level", "warning", "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1])
    url, rows = f"http://127.0.0.1:{port}", []
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        bodies = request_bodies(64, 1000, seed=0)
        run_loop(drive(url, bodies, 4, 1.0))
        for concurrency in concurrencies:
            cpu_server = cpu_seconds(proc.pid)
            latencies, answers, errors, cpu_client, elapsed = drive_clients(url, bodies, concurrency, seconds, pool)
            n = max(len(answers), 1)
            row = {
                "N": 0,
                "concurrency": concurrency,
                "p50_ms": 1e3 * percentile(latencies, 0.50),
                "p95_ms": 1e3 * percentile(latencies, 0.95),
                "p99_ms": 1e3 * percentile(latencies, 0.99),
                "rps": len(answers) / elapsed,
                "errors": errors,
                "requests": len(answers),
                "server_cpu_ms_per_request": 1e3 * (cpu_seconds(proc.pid) - cpu_server) / n,
                "client_cpu_ms_per_request": 1e3 * cpu_client / n,
                "client_processes": min(pool._max_workers if pool is not None else 1, concurrency),
                "load_average": os.getloadavg()[0],
                "endpoint": "a FastAPI endpoint that does nothing",
            }
            rows.append(row)
            print_row(row)
    finally:
        proc.terminate()
        proc.wait()
    return rows


def print_row(row: dict) -> None:
    print(
        f"{row['N']:>7} {row['concurrency']:>4} {row['p50_ms']:>8.2f} {row['p95_ms']:>8.2f} {row['p99_ms']:>8.2f} "
        f"{row['rps']:>8.0f} {row['errors']:>6} {row['server_cpu_ms_per_request']:>8.2f} "
        f"{row['client_cpu_ms_per_request']:>8.2f} {row.get('mean_scoring_batch', 0):>6.1f} "
        f"{row['load_average']:>5.1f}",
        flush=True,
    )


def export_model(n_items: int, directory: Path, exploration: ExplorationConfig) -> Path:
    shop = Shop(env_preset("default", n_items=n_items, num_users=1, device="cpu"))
    agent = DQNAgent(AgentSpec.from_shop(shop), device="cpu", buffer_size=1, batch_size=1)
    return export_agent(agent, shop.cfg, directory / f"model-{n_items}", exploration=exploration)


def request_bodies(n: int, n_items: int, seed: int) -> list[bytes]:
    """Pre-encoded recommend bodies (the client's own cost stays small)."""
    rng = random.Random(seed)
    responses = ["ignored", "clicked", "purchased"]
    out = []
    for _ in range(n):
        history = []
        for _ in range(rng.randint(0, 5)):
            kind = rng.choice(responses)
            entry = {"item": rng.randrange(n_items), "response": kind}
            if kind == "purchased":
                entry["rating"] = rng.randint(1, 5)
            history.append(entry)
        body = {
            "user_features": [rng.randrange(6), rng.randrange(3), rng.randrange(8)],
            "history": history,
            "step": len(history),
        }
        out.append(json.dumps(body).encode())
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_metrics(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {
        m.group(1): float(m.group(2)) for m in re.finditer(r"^(rlrec_[a-z_]+(?:_sum|_count)) ([0-9.e+-]+)$", text, re.M)
    }


async def drive(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> tuple[list[float], list[dict], int]:
    """``concurrency`` clients sending recommend requests back to back for ``seconds``."""
    latencies: list[float] = []
    answers: list[dict] = []
    errors = 0
    headers = {"content-type": "application/json"}
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        # one client, one keep-alive connection per worker: httpx's pool scans its connections
        # on every request, so one shared pool of 32 costs the client several times more CPU
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=httpx.Limits(max_connections=1)) as client:
            while time.perf_counter() < deadline:
                body = bodies[next(counter) % len(bodies)]
                started = time.perf_counter()
                try:
                    answer = await client.post("/v1/recommend", content=body, headers=headers)
                except httpx.TransportError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if answer.status_code == 200:
                    answers.append(answer.json())
                else:
                    errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, answers, errors


def _drive_in_process(args: tuple) -> tuple[list[float], list[dict], int, float, float]:
    """One client process: wait for the common start, drive, report (latencies, answers, errors,
    CPU seconds, wall seconds)."""
    url, bodies, concurrency, seconds, start_at = args
    time.sleep(max(start_at - time.time(), 0))
    cpu, started = time.process_time(), time.perf_counter()
    latencies, answers, errors = run_loop(drive(url, bodies, concurrency, seconds))
    return latencies, answers, errors, time.process_time() - cpu, time.perf_counter() - started


def drive_clients(url: str, bodies: list[bytes], concurrency: int, seconds: float, pool: Any) -> tuple:
    """``concurrency`` clients spread over the pool's processes (one httpx client process tops out
    near 1,000 requests/s on one core); (latencies, answers, errors, client CPU s, wall s)."""
    processes = min(pool._max_workers if pool is not None else 1, concurrency)
    if processes <= 1:
        return _drive_in_process((url, bodies, concurrency, seconds, time.time()))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    start_at = time.time() + 0.5
    parts = list(pool.map(_drive_in_process, [(url, bodies, c, seconds, start_at) for c in shares]))
    return (
        [x for p in parts for x in p[0]],
        [x for p in parts for x in p[1]],
        sum(p[2] for p in parts),
        sum(p[3] for p in parts),
        max(p[4] for p in parts),
    )


async def send_feedback(url: str, answers: list[dict], concurrency: int, seed: int) -> tuple[list[dict], int, float]:
    rng = random.Random(seed)
    events = [
        {"request_id": a["request_id"], "position": rng.randrange(len(a["items"])), "click": rng.random() < 0.3}
        for a in answers
    ]
    errors, queue = 0, iter(events)
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=url, timeout=30.0, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def worker() -> None:
            nonlocal errors
            for event in queue:
                answer = await client.post("/v1/feedback", json=event)
                errors += answer.status_code != 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return events, errors, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def check_store(store: Path, answers: list[dict], events: list[dict]) -> dict[str, int]:
    """Every answered decision (items and propensities as answered) and every feedback event is stored."""
    data = load_served(store)
    index = {rid: d for d, rid in enumerate(data.request_ids)}
    shown: dict[int, list] = {}
    for d, item, p in zip(data.decision.tolist(), data.action.tolist(), data.propensity.tolist()):
        shown.setdefault(d, []).append((item, p))
    missing = sum(1 for a in answers if a["request_id"] not in index)
    wrong = sum(
        1
        for a in answers
        if a["request_id"] in index and shown[index[a["request_id"]]] != list(zip(a["items"], a["propensities"]))
    )
    clicked = {
        (data.request_ids[d], pos)
        for d, pos, c in zip(data.decision.tolist(), data.position.tolist(), data.click.tolist())
        if c
    }
    with_feedback = {
        (data.request_ids[d], pos)
        for d, pos, f in zip(data.decision.tolist(), data.position.tolist(), data.feedback.tolist())
        if f
    }
    lost = sum(1 for e in events if (e["request_id"], e["position"]) not in with_feedback)
    wrong_click = sum(1 for e in events if ((e["request_id"], e["position"]) in clicked) != e["click"])
    return {
        "decisions_missing": missing,
        "decisions_wrong": wrong,
        "feedback_missing": lost,
        "feedback_wrong": wrong_click,
    }


def run_point(
    model: Path, n_items: int, concurrencies: list[int], seconds: float, work: Path, extra: list[str], pool: Any
) -> list[dict]:
    store = work / f"bench-{n_items}.db"
    rows = []
    bodies = request_bodies(4096, n_items, seed=n_items)
    with (
        ServiceProcess(model, store, "log_level=warning", "seed=0", *extra) as service,
        httpx.Client(base_url=service.url) as sync,
    ):
        run_loop(drive(service.url, bodies, 4, min(2.0, seconds)))  # warm-up
        for concurrency in concurrencies:
            before, cpu_server = server_metrics(sync), cpu_seconds(service.pid)
            latencies, answers, errors, cpu_client, elapsed = drive_clients(
                service.url, bodies, concurrency, seconds, pool
            )
            cpu_server = cpu_seconds(service.pid) - cpu_server
            after = server_metrics(sync)
            delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            events, feedback_errors, feedback_seconds = asyncio.run(
                send_feedback(service.url, answers, concurrency, concurrency)
            )
            check = check_store(store, answers, events)
            n = max(len(answers), 1)
            row = {
                "N": n_items,
                "concurrency": concurrency,
                "p50_ms": 1e3 * percentile(latencies, 0.50),
                "p95_ms": 1e3 * percentile(latencies, 0.95),
                "p99_ms": 1e3 * percentile(latencies, 0.99),
                "rps": len(answers) / elapsed,
                "errors": errors + feedback_errors + sum(check.values()),
                "requests": len(answers),
                "feedback_rps": len(events) / feedback_seconds,
                "server_cpu_ms_per_request": 1e3 * cpu_server / n,
                "client_cpu_ms_per_request": 1e3 * cpu_client / n,
                "client_processes": min(pool._max_workers if pool is not None else 1, concurrency),
                "mean_scoring_batch": delta.get("rlrec_scoring_batch_size_sum", 0)
                / max(delta.get("rlrec_scoring_batch_size_count", 0), 1),
                "scoring_ms_per_batch": 1e3
                * delta.get("rlrec_scoring_seconds_sum", 0)
                / max(delta.get("rlrec_scoring_seconds_count", 0), 1),
                "commit_ms": 1e3
                * delta.get("rlrec_store_commit_seconds_sum", 0)
                / max(delta.get("rlrec_store_commit_seconds_count", 0), 1),
                "records_per_commit": delta.get("rlrec_store_commit_records_sum", 0)
                / max(delta.get("rlrec_store_commit_records_count", 0), 1),
                "load_average": os.getloadavg()[0],
                **check,
            }
            rows.append(row)
            print_row(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N in {1000, 10000}, 3 s per point")
    parser.add_argument("--out", default="bench_serving.json", help="where to write the JSON rows")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per point (default 10; quick 3)")
    parser.add_argument("--n-items", type=int, nargs="*", default=None)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--exploration", default="epsilon_greedy", choices=["greedy", "epsilon_greedy", "softmax"])
    parser.add_argument("--backend", default="auto", choices=["auto", "torchscript", "onnx"])
    parser.add_argument("--baseline", action="store_true", help="first, the same clients against a do-nothing endpoint")
    parser.add_argument("--client-processes", type=int, default=2, help="processes the concurrent clients run in")
    args = parser.parse_args()

    sizes = args.n_items or ([1000, 10_000] if args.quick else [1000, 10_000, 100_000])
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    exploration = ExplorationConfig(kind=args.exploration)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"{args.exploration} exploration, {args.backend}, {seconds:.0f} s per point"
    )
    print(
        f"{'N':>7} {'conc':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>6} "
        f"{'srv cpu':>8} {'cli cpu':>8} {'batch':>6} {'load':>5}"
    )
    pool = None
    if args.client_processes > 1:
        pool = ProcessPoolExecutor(args.client_processes, mp_context=multiprocessing.get_context("spawn"))
        list(pool.map(time.sleep, [0.0] * args.client_processes))  # start (and import) the client processes now
    rows = run_baseline(args.concurrency, seconds, pool) if args.baseline else []
    with tempfile.TemporaryDirectory(prefix="rlrec-bench-") as tmp:
        work = Path(tmp)
        for n_items in sizes:
            model = export_model(n_items, work, exploration)
            extra = [f"backend={args.backend}"]
            rows += run_point(model, n_items, args.concurrency, seconds, work, extra, pool)
    if pool is not None:
        pool.shutdown()
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {len(rows)} rows to {args.out}")
    bad = [r for r in rows if r["errors"]]
    if bad:
        raise SystemExit(f"{len(bad)} point(s) had errors or records missing from the store: see {args.out}")


if __name__ == "__main__":
    main()
