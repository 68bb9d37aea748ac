"""Simulated clients: the shop's users play against a running service over HTTP and send their feedback.

``python -m rlrec.serve.traffic --url http://127.0.0.1:8000 --requests 10000 --concurrency 32``

The shop is the one the served model was trained in, rebuilt from the manifest that
``GET /v1/model`` returns (its env fingerprint is checked). ``concurrency`` sessions run side
by side: at each step every session asks ``/v1/recommend`` for a slate (its user's features,
history and step, exactly as the shop observes them), the shop plays the slates in one
batched step, and every session reports what its user did to ``/v1/feedback``: the clicked
position with the purchase and the rating, or position 0 with ``click: false`` when the slate
was ignored. Sessions that end restart with new users; ``max_steps`` caps their length
(``max_steps=1``: every request is a new user's first step).

Request ids are ``<prefix>-<n>``, so with the service's ``seed`` fixed a run is reproducible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rlrec.sim import response

RESPONSE_NAMES = {response.IGNORED: "ignored", response.CLICKED: "clicked"}


@dataclass
class TrafficReport:
    """What a run of :func:`play` sent and got back."""

    requests: int = 0
    feedback: int = 0
    errors: int = 0
    clicks: int = 0
    purchases: int = 0
    seconds: float = 0.0
    model_versions: dict[str, int] = field(default_factory=dict)  # requests answered by each version
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)  # request id -> answer (if kept)


def shop_for(manifest: dict[str, Any], users: int, max_steps: int | None, seed: int) -> Any:
    """The shop a served model was trained in, with ``users`` sessions side by side."""
    from rlrec.config import ConfigError, env_config_from
    from rlrec.sim.env import Shop
    from rlrec.train.run import env_fingerprint

    env = env_config_from(manifest["env"], num_users=users, device="cpu")
    if env_fingerprint(env) != manifest["env_fingerprint"]:
        raise ConfigError("the manifest's env config does not match its fingerprint; export the model again.")
    if max_steps is not None:
        env = env_config_from(env, horizon=min(max_steps, env.horizon))
    shop = Shop(env)
    shop.reset(seed=seed)
    return shop


def request_body(obs: dict[str, torch.Tensor], row: int, n_items: int, request_id: str) -> dict[str, Any]:
    """The ``/v1/recommend`` body of one session: its observation, in the API's terms."""
    history = []
    for item, code in zip(obs["history_items"][row].tolist(), obs["history_codes"][row].tolist()):
        if code == response.PAD:
            continue
        if code >= response.PURCHASED:
            history.append({"item": item, "response": "purchased", "rating": code - response.PURCHASED + 1})
        else:
            history.append({"item": item, "response": RESPONSE_NAMES[code]})
    body = {
        "request_id": request_id,
        "user_features": obs["user_features"][row].tolist(),
        "history": history,
        "step": int(obs["step"][row]),
    }
    if "satisfaction" in obs:
        body["satisfaction"] = int(obs["satisfaction"][row])
    return body


async def play(
    url: str,
    requests: int,
    concurrency: int = 32,
    max_steps: int | None = None,
    seed: int = 0,
    prefix: str = "sim",
    keep: bool = False,
    retries: int = 3,
    feedback_batches: bool = False,
) -> TrafficReport:
    """Play ``requests`` recommendations (rounded up to whole steps of ``concurrency`` sessions).

    ``keep``: also return every answer (for tests). ``retries``: a failed request is sent again
    with the same id (the service answers a retried id with its logged decision).
    ``feedback_batches``: send each step's feedback as one list (as a shop's backend forwarding
    events would) instead of one request per session.
    """
    import httpx

    # one client and one keep-alive connection per session, as separate customers would have
    # (a single pool of many connections also costs httpx several times more CPU per request)
    clients = [httpx.AsyncClient(base_url=url, timeout=30.0, limits=httpx.Limits(max_connections=1))
               for _ in range(concurrency)]  # fmt: skip
    report = TrafficReport()
    try:
        manifest = (await clients[0].get("/v1/model")).raise_for_status().json()["manifest"]
        shop = shop_for(manifest, concurrency, max_steps, seed)
        n_items, sent, started = shop.n_items, 0, time.perf_counter()

        async def post(path: str, body: Any, client: Any) -> dict[str, Any]:
            for attempt in range(retries + 1):
                try:
                    answer = await client.post(path, json=body)
                except httpx.TransportError:
                    answer = None
                if answer is not None and answer.status_code == 200:
                    return answer.json()
                report.errors += 1
                if attempt == retries:
                    detail = answer.text if answer is not None else "no answer"
                    raise RuntimeError(f"{path} failed {retries + 1} times: {detail}")
                await asyncio.sleep(0.05 * 2**attempt)
            raise AssertionError("unreachable")

        obs = shop.observation()
        while sent < requests:
            ids = [f"{prefix}-{sent + b}" for b in range(concurrency)]
            bodies = [request_body(obs, b, n_items, ids[b]) for b in range(concurrency)]
            answers = await asyncio.gather(*(post("/v1/recommend", body, c) for body, c in zip(bodies, clients)))
            sent += concurrency
            report.requests += concurrency
            for answer in answers:
                report.model_versions[answer["model_version"]] = (
                    report.model_versions.get(answer["model_version"], 0) + 1
                )
                if keep:
                    report.decisions[answer["request_id"]] = answer
            result = shop.step(torch.tensor([a["items"] for a in answers], dtype=torch.long))
            info = result.info
            click, choice = info["click"].tolist(), info["choice"].tolist()
            purchase, rating = info["purchase"].tolist(), info["rating"].tolist()
            events = [
                {
                    "request_id": ids[b],
                    "position": max(choice[b], 0),
                    "click": click[b],
                    "purchase": purchase[b],
                    "rating": rating[b] or None,
                }
                for b in range(concurrency)
            ]
            if feedback_batches:
                await post("/v1/feedback", events, clients[0])
            else:
                await asyncio.gather(*(post("/v1/feedback", event, c) for event, c in zip(events, clients)))
            report.feedback += len(events)
            report.clicks += sum(click)
            report.purchases += sum(purchase)
            obs = result.obs
        report.seconds = time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()
    return report


def run_loop(coroutine: Any) -> Any:
    """``asyncio.run``, on uvloop when it is installed (a cheaper event loop for many connections)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlrec.serve.traffic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32, help="sessions played side by side")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on a session's length (default: the shop's)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the shop's users")
    parser.add_argument("--prefix", default="sim", help="request ids are <prefix>-<n>")
    args = parser.parse_args(argv)

    import httpx

    from rlrec.cli import friendly_errors

    with friendly_errors():
        try:
            report = run_loop(
                play(args.url, args.requests, args.concurrency, args.max_steps, args.seed, prefix=args.prefix)
            )
        except (httpx.TransportError, httpx.HTTPStatusError) as err:
            raise SystemExit(
                f"error: the service at {args.url} cannot be used ({type(err).__name__}: {err})."
            ) from None
    summary = {k: v for k, v in vars(report).items() if k != "decisions"}
    summary["requests_per_s"] = round(report.requests / max(report.seconds, 1e-9), 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
