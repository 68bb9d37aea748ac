"""The recommendation service: a FastAPI app on uvicorn (``python serve.py``, see README "Deploy").

Endpoints:

- ``POST /v1/recommend``: a customer's features, recent history and step (optionally k, a
  candidate subset, a request id) -> ``{request_id, model_version, items, propensities}``.
  The propensity of each item is the exact probability that the serving policy (scores plus
  exploration, :mod:`rlrec.serve.exploration`) put it at that position.
- ``POST /v1/feedback``: ``{request_id, position, click, purchase, rating}`` (or a list of
  them); idempotent; an unknown request id is a 404.
- ``GET /healthz``, ``GET /v1/model`` (the manifest and serving settings), ``GET /metrics``
  (Prometheus), ``POST /v1/admin/reload`` (swap the model now).

What a request goes through: its body is validated by pydantic (types, bounds, unknown
fields) and then against the current model (feature ranges, item ids, k); it takes the
current model once, so a hot swap never touches it; requests that arrive together are
scored as one batch in a worker thread (:class:`BatchScorer`); the decision is logged and
committed (:mod:`rlrec.serve.store`) before the answer is sent. Every bad input is a 422
naming the field and what is allowed; nothing a client sends can stop the service.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlrec.config import ServeConfig, build_config
from rlrec.serve.exploration import MAX_K, MAX_SOFTMAX_K, Decision, decide, request_seed
from rlrec.serve.model import ModelError, ModelHolder, ServedModel
from rlrec.serve.store import (
    DUPLICATE,
    DecisionRecord,
    FeedbackRecord,
    SQLStore,
    StoreOverloaded,
    StoreUnavailable,
)

log = logging.getLogger("rlrec.serve")
REQUEST_ID = r"^[A-Za-z0-9._:-]+$"
CONFIG_ENV = "RLREC_SERVE_CONFIG"  # the service's config, for uvicorn's worker processes
RECENT_DECISIONS = 100_000  # request id -> k kept in memory for the feedback that follows


# ----------------------------------------------------------------------------- the HTTP contract
class HistoryEntry(BaseModel):
    """One earlier step of the session: the item the customer acted on (or the first shown) and how."""

    model_config = ConfigDict(extra="forbid", strict=True)
    item: int = Field(ge=0, description="item id, 0..N-1")
    response: Literal["ignored", "clicked", "purchased"]
    rating: Optional[int] = Field(None, ge=1, le=5, description="1..5, with response 'purchased' only")

    @model_validator(mode="after")
    def _rating_with_purchase(self) -> HistoryEntry:
        if (self.response == "purchased") != (self.rating is not None):
            raise ValueError("a rating (1..5) comes with response 'purchased', and only with it")
        return self


class RecommendRequest(BaseModel):
    """``POST /v1/recommend``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    request_id: Optional[str] = Field(None, min_length=1, max_length=64, pattern=REQUEST_ID)
    user_features: list[int] = Field(min_length=1, max_length=64)
    history: list[HistoryEntry] = Field(default_factory=list, max_length=1000)  # oldest first
    step: int = Field(0, ge=0, description="steps already taken in this session")
    k: Optional[int] = Field(None, ge=1, le=MAX_K, description="items to show (default: the model's slate size)")
    candidates: Optional[list[int]] = Field(None, min_length=1, max_length=1_000_000)
    satisfaction: Optional[int] = Field(None, ge=0, description="only for models of shops that observe it")


class FeedbackEvent(BaseModel):
    """``POST /v1/feedback`` (one event, or a list of up to 1,000)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    request_id: str = Field(min_length=1, max_length=64, pattern=REQUEST_ID)
    position: int = Field(ge=0, description="0-based position in the recommended slate")
    click: bool = Field(strict=False)  # true/false or 1/0
    purchase: bool = Field(False, strict=False)
    rating: Optional[int] = Field(None, ge=1, le=5)

    @model_validator(mode="after")
    def _consistent(self) -> FeedbackEvent:
        if self.purchase and not self.click:
            raise ValueError("purchase = true needs click = true (a purchase follows a click)")
        if self.rating is not None and not self.purchase:
            raise ValueError("a rating (1..5) needs purchase = true")
        return self


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    path: Optional[str] = Field(
        None, min_length=1, description="an exported model directory (default: the watched one)"
    )


class Invalid(Exception):
    """A request that passed the schema but not the model's rules: a 422 at ``loc``."""

    def __init__(self, loc: tuple, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.loc, self.message, self.value = loc, message, value


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Job:
    """One validated recommend request on its way through the batch scorer."""

    model: ServedModel
    inputs: dict[str, Any]
    k: int
    candidates: list[int] | None
    seed: int
    future: asyncio.Future = field(default=None, repr=False)


def encode_request(body: RecommendRequest, model: ServedModel) -> tuple[dict[str, Any], int, list[int] | None]:
    """The model's inputs, k and candidates for a request, or :class:`Invalid` naming the field."""
    m = model.manifest
    names, sizes = m["user_features"]["names"], m["user_features"]["sizes"]
    features = body.user_features
    if len(features) != len(sizes):
        raise Invalid(("user_features",), f"must hold {len(sizes)} values ({', '.join(names)})", features)
    for i, (value, size, name) in enumerate(zip(features, sizes, names)):
        if not 0 <= value < size:
            raise Invalid(("user_features", i), f"{name} must be in 0..{size - 1}", value)
    n = model.n_items
    h, codes = int(m["history_len"]), m["responses"]
    entries = body.history[-h:]  # the model sees the last history_len steps
    for j, entry in enumerate(body.history):
        if entry.item >= n:
            raise Invalid(("history", j, "item"), f"must be an item id in 0..{n - 1}", entry.item)
    pad = h - len(entries)
    items = [n] * pad + [e.item for e in entries]  # item n pads, as in the shop's observation
    code = [0] * pad + [codes[e.response] + ((e.rating - 1) if e.rating else 0) for e in entries]
    if body.step > int(m["horizon"]):
        raise Invalid(("step",), f"must be in 0..{m['horizon']} (the session horizon)", body.step)
    inputs = {"user_features": features, "history_items": items, "history_codes": code, "step": body.step}
    levels = int(m["satisfaction_levels"])
    if m["observe_satisfaction"]:
        if body.satisfaction is None or body.satisfaction >= levels:
            raise Invalid(("satisfaction",), f"is required by this model: 0..{levels - 1}", body.satisfaction)
        inputs["satisfaction"] = body.satisfaction
    elif body.satisfaction is not None:
        raise Invalid(("satisfaction",), "is not an input of this model: leave it out", body.satisfaction)
    candidates = body.candidates
    if candidates is not None:
        bad = next((j for j, item in enumerate(candidates) if not 0 <= item < n), None)
        if bad is not None:
            raise Invalid(("candidates", bad), f"must be an item id in 0..{n - 1}", candidates[bad])
        if len(set(candidates)) != len(candidates):
            raise Invalid(("candidates",), "must be distinct item ids (one appears twice)", None)
    n_cand = n if candidates is None else len(candidates)
    limit = min(n_cand, MAX_SOFTMAX_K if model.exploration.kind == "softmax" else MAX_K)
    k = body.k if body.k is not None else min(int(m["slate_size"]), n_cand)
    if k > limit:
        why = "the candidates" if n_cand == limit else f"the most shown with {model.exploration.kind} exploration"
        raise Invalid(("k",), f"must be in 1..{limit} ({why})", body.k)
    return inputs, k, candidates


def request_hash(body: RecommendRequest) -> str:
    """A hash of everything in the request but its id: a retried id must carry the same request."""
    content = body.model_dump_json(exclude={"request_id"})  # fields in declaration order: canonical
    return hashlib.blake2b(content.encode(), digest_size=16).hexdigest()


# ----------------------------------------------------------------------------- batched scoring
class BatchScorer:
    """Scores the requests that arrive together as one batch.

    No timer: a request joins the queue, and a drain task (scheduled once per burst) scores
    everything queued, at most ``max_batch`` at a time. At low load a batch is one request
    (no added latency); at high load, requests arrive while a batch is scored and the next
    batch takes them all, so the model's per-call cost is shared. Scoring runs on the event
    loop's thread: it is a few hundred microseconds of mostly torch kernels, less than what a
    hand-off to another thread costs on a busy machine (two wake-ups and the GIL).
    """

    def __init__(self, max_batch: int, metrics: Metrics) -> None:
        self.max_batch, self.metrics = max_batch, metrics
        self.queue: list[Job] = []
        self.draining = False

    async def decide(self, job: Job) -> Decision:
        job.future = asyncio.get_running_loop().create_future()
        self.queue.append(job)
        if not self.draining:
            self.draining = True
            asyncio.get_running_loop().call_soon(self._drain)
        return await job.future

    def _drain(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
                for model in {id(j.model): j.model for j in batch}.values():  # one batch per model (hot swap)
                    jobs = [j for j in batch if j.model is model]
                    try:
                        decisions = self._score(model, jobs)
                    except Exception as err:  # a bug, not the client's: answered 500, the service goes on
                        log.exception("scoring failed")
                        for j in jobs:
                            if not j.future.done():
                                j.future.set_exception(err)
                        continue
                    for j, decision in zip(jobs, decisions):
                        if not j.future.done():
                            j.future.set_result(decision)
        finally:
            self.draining = False

    def _score(self, model: ServedModel, jobs: list[Job]) -> list[Decision]:
        started = time.perf_counter()
        inputs = {name: torch.tensor([j.inputs[name] for j in jobs], dtype=torch.long) for name in model.inputs}
        scores = model.scores(inputs)
        out = decide(
            scores, [j.k for j in jobs], [j.candidates for j in jobs], model.exploration, [j.seed for j in jobs]
        )
        self.metrics.scoring(len(jobs), time.perf_counter() - started)
        return out


# ----------------------------------------------------------------------------- metrics
class Metrics:
    """The Prometheus metrics of one service (its own registry, or the multiprocess collector)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        fast = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
        self.requests = Counter(
            "rlrec_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.errors = Counter("rlrec_errors", "HTTP requests answered 4xx or 5xx", ["endpoint", "status"], registry=r)
        self.latency = Histogram("rlrec_request_seconds", "request latency", ["endpoint"], buckets=fast, registry=r)
        self.decisions = Counter("rlrec_decisions", "recommendations logged", ["explored"], registry=r)
        self.feedback = Counter("rlrec_feedback_events", "feedback events logged", registry=r)
        self.model = Gauge(
            "rlrec_model_info", "the model version served (1)", ["version"], registry=r, multiprocess_mode="livemax"
        )
        self.swaps = Counter("rlrec_model_swaps", "models swapped in", registry=r)
        self.reload_failures = Counter("rlrec_model_reload_failures", "models refused at reload", registry=r)
        self.batch = Histogram(
            "rlrec_scoring_batch_size",
            "requests scored together",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.scoring_seconds = Histogram(
            "rlrec_scoring_seconds", "scoring + exploration per batch", buckets=fast, registry=r
        )
        self.commit_records = Histogram(
            "rlrec_store_commit_records",
            "records per commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.commit_seconds = Histogram("rlrec_store_commit_seconds", "seconds per commit", buckets=fast, registry=r)

    def scoring(self, n: int, seconds: float) -> None:
        self.batch.observe(n)
        self.scoring_seconds.observe(seconds)

    def commit(self, n: int, seconds: float) -> None:
        self.commit_records.observe(n)
        self.commit_seconds.observe(seconds)

    def serving(self, old: str | None, new: str) -> None:
        if old is not None and old != new:
            self.model.labels(old).set(0)  # (removing a label does not reach other worker processes)
        self.model.labels(new).set(1)

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if self.multiprocess:  # every worker process's values, summed
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request (a plain ASGI middleware: no per-request task)."""

    ENDPOINTS = {"/v1/recommend", "/v1/feedback", "/v1/model", "/healthz", "/metrics", "/v1/admin/reload"}

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]
        endpoint = scope["path"] if scope["path"] in self.ENDPOINTS else "other"

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            code = str(status[0])
            self.metrics.requests.labels(endpoint, code).inc()
            if status[0] >= 400:
                self.metrics.errors.labels(endpoint, code).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


# ----------------------------------------------------------------------------- the app
def create_app(cfg: ServeConfig) -> FastAPI:
    """The service for ``cfg`` (model, store and settings are opened when it starts)."""
    metrics = Metrics()
    state: dict[str, Any] = {}
    recent: OrderedDict[str, int] = OrderedDict()

    async def lifespan(app: FastAPI):
        torch.set_num_threads(1)  # one core per scoring thread: HTTP and the log writer keep theirs
        model_path = Path(cfg.model)
        holder = await asyncio.to_thread(ModelHolder, model_path, cfg.backend, cfg.exploration)
        store = await asyncio.to_thread(SQLStore, cfg.store, metrics.commit)
        await asyncio.to_thread(store.register_model, holder.current.manifest, _catalog(holder.current))
        metrics.serving(None, holder.current.version)
        state.update(holder=holder, store=store, scorer=BatchScorer(cfg.max_batch, metrics), started=time.time())
        state["reload_lock"] = asyncio.Lock()
        watcher = asyncio.create_task(_watch()) if cfg.reload_interval_s > 0 else None
        gc.freeze()  # what startup built lives as long as the service: keep it out of every collection
        log.info(
            "serving %s (%s, %s exploration) from %s; logging to %s",
            holder.current.version,
            cfg.backend,
            holder.current.exploration.kind,
            holder.current.path,
            store.location,
        )
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            if store.in_loop:  # commits what is queued
                store.close()
            else:
                await asyncio.to_thread(store.close)

    async def _reload(path: str | None) -> tuple[str, str]:
        holder, store = state["holder"], state["store"]
        async with state["reload_lock"]:
            old, new = await asyncio.to_thread(
                holder.reload, path, lambda model: store.register_model(model.manifest, _catalog(model))
            )
        if old != new:
            metrics.swaps.inc()
            metrics.serving(old, new)
            log.info("swapped model %s -> %s", old, new)
        return old, new

    async def _watch() -> None:
        refused: str | None = None
        while True:
            await asyncio.sleep(cfg.reload_interval_s)
            version = state["holder"].pending_version()
            if version is None or version == refused:
                continue
            try:
                await _reload(None)
            except Exception as err:  # keep serving the current model; try again when the version changes
                refused = version
                metrics.reload_failures.inc()
                log.error("model %s at %s was not swapped in: %s", version, state["holder"].watched, err)

    app = FastAPI(title="rlrec recommendation service", lifespan=lifespan)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        return _unprocessable([_describe(e, request.url.path) for e in err.errors()])

    @app.exception_handler(Invalid)
    async def _invalid_value(request: Request, err: Invalid) -> JSONResponse:
        loc = ("body", *err.loc)
        return _unprocessable([{"loc": list(loc), "msg": f"{_field(loc)} {err.message}", "input": err.value}])

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, err: HTTPError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": f"internal error ({type(err).__name__}); it is logged"}, status_code=500)

    @app.post("/v1/recommend", openapi_extra=_body_schema(RecommendRequest))
    async def recommend(request: Request) -> JSONResponse:
        body = _parse(RecommendRequest, await request.body())
        model: ServedModel = state["holder"].current  # this request's model, whatever swaps happen
        inputs, k, candidates = encode_request(body, model)
        request_id = body.request_id or uuid.uuid4().hex
        seed = request_seed(cfg_seed, request_id)
        job = Job(model, inputs, k, candidates, seed)
        decision = await state["scorer"].decide(job)
        record = DecisionRecord(
            request_id=request_id,
            request_hash=request_hash(body),
            ts=time.time(),
            model_version=model.version,
            k=k,
            user_features=inputs["user_features"],
            history_items=inputs["history_items"],
            history_codes=inputs["history_codes"],
            step=inputs["step"],
            satisfaction=inputs.get("satisfaction"),
            candidates=body.candidates,
            n_candidates=model.n_items if candidates is None else len(candidates),
            exploration=asdict(model.exploration),
            items=decision.items,
            propensities=decision.propensities,
        )
        logged = await _log(state["store"].record_decision(record))
        if logged is DUPLICATE:  # a retry: the answer first given, if it is the same request
            stored = await asyncio.to_thread(state["store"].find, request_id)
            if stored.request_hash != record.request_hash:
                raise HTTPError(409, f"request_id {request_id!r} was already used for another request; send a new id.")
            _remember(request_id, stored.k)
            return JSONResponse(
                {
                    "request_id": request_id,
                    "model_version": stored.model_version,
                    "items": stored.items,
                    "propensities": stored.propensities,
                },
                headers={"Idempotent-Replay": "true"},
            )
        _remember(request_id, k)
        metrics.decisions.labels(str(decision.explored).lower()).inc()
        return JSONResponse(
            {
                "request_id": request_id,
                "model_version": model.version,
                "items": decision.items,
                "propensities": decision.propensities,
            }
        )

    @app.post("/v1/feedback", openapi_extra=_body_schema(FeedbackEvent))
    async def feedback(request: Request) -> JSONResponse:
        body = _parse_feedback(await request.body())
        events = body if isinstance(body, list) else [body]
        records = []
        for j, event in enumerate(events):
            found = recent.get(event.request_id)
            if found is None:
                stored = await asyncio.to_thread(state["store"].find, event.request_id)
                if stored is None:
                    raise HTTPError(
                        404,
                        f"unknown request_id {event.request_id!r}: no recommendation with this id is logged "
                        "(use the request_id that /v1/recommend returned).",
                    )
                found = _remember(event.request_id, stored.k)
            k = found
            if event.position >= k:
                loc = ("position",) if not isinstance(body, list) else (j, "position")
                raise Invalid(
                    loc, f"must be in 0..{k - 1}: request {event.request_id!r} showed {k} items", event.position
                )
            records.append(
                FeedbackRecord(
                    event.request_id,
                    event.position,
                    int(event.click),
                    int(event.purchase),
                    event.rating or 0,
                    time.time(),
                )
            )
        await _log(asyncio.gather(*(state["store"].record_feedback(r) for r in records)))
        metrics.feedback.inc(len(records))
        if isinstance(body, list):
            return JSONResponse({"stored": len(records)})
        return JSONResponse({"request_id": body.request_id, "position": body.position, "stored": True})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        store = state["store"]
        alive = store.healthy
        return JSONResponse(
            {
                "status": "ok" if alive else "store writer stopped",
                "model_version": state["holder"].current.version,
                "store_pending": store.pending,
                "uptime_s": round(time.time() - state["started"], 3),
            },
            status_code=200 if alive else 503,
        )

    @app.get("/v1/model")
    async def model_info() -> JSONResponse:
        model: ServedModel = state["holder"].current
        return JSONResponse(
            {
                "model_version": model.version,
                "path": str(model.path),
                "backend": model.backend,
                "exploration": asdict(model.exploration),
                "manifest": model.manifest,
            }
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/admin/reload")
    async def reload(body: Optional[ReloadRequest] = None) -> JSONResponse:
        if not cfg.admin:
            raise HTTPError(403, "the admin endpoint is turned off (admin=false).")
        path = body.path if body is not None else None
        if path is not None and cfg.workers > 1:
            raise HTTPError(
                409,
                f"with workers={cfg.workers}, publish the model at the watched path ({cfg.model}) so that every "
                "worker swaps: python -m rlrec.serve.export ... --publish <that path>.",
            )
        try:
            old, new = await _reload(path)
        except ModelError as err:
            metrics.reload_failures.inc()
            raise HTTPError(409, f"model not swapped, {old_version()} still serves: {err}") from None
        return JSONResponse({"previous": old, "model_version": new, "swapped": old != new})

    def old_version() -> str:
        return state["holder"].current.version

    async def _log(awaitable: Any) -> Any:
        try:
            return await awaitable
        except (StoreOverloaded, StoreUnavailable) as err:
            raise HTTPError(503, f"{err}; retry shortly.") from None

    def _remember(request_id: str, k: int) -> int:
        recent[request_id] = k
        if len(recent) > RECENT_DECISIONS:
            recent.popitem(last=False)
        return k

    cfg_seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
    return app


_EVENTS = None


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI description of a body the endpoint parses itself (for /docs)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    """``model`` from the raw JSON body, parsed and validated in one pass by pydantic's core (no
    intermediate Python dict); errors become the same 422 as FastAPI's own."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors()]) from None


def _parse_feedback(raw: bytes) -> FeedbackEvent | list[FeedbackEvent]:
    """One event (a JSON object) or up to 1,000 (a JSON array), validated like a FastAPI body."""
    from pydantic import TypeAdapter, ValidationError

    global _EVENTS
    if _EVENTS is None:
        _EVENTS = TypeAdapter(list[FeedbackEvent])
    try:
        if raw.lstrip()[:1] == b"[":
            events = _EVENTS.validate_json(raw)
            if len(events) > 1000:
                raise Invalid((), "holds more than 1,000 events: send them in several requests", len(events))
            return events
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors()]) from None
    return _parse(FeedbackEvent, raw)


def _catalog(model: ServedModel) -> dict[str, list]:
    return json.loads((model.path / model.manifest["files"]["catalog"]).read_text())


def _unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    """422 ``{"error": <the first problem, one sentence>, "detail": [every problem]}``."""
    return JSONResponse({"error": errors[0]["msg"], "detail": errors}, status_code=422)


def _field(loc: tuple | list) -> str:
    """``("body", "history", 2, "item")`` -> ``history[2].item``."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the body"


def _describe(error: dict[str, Any], path: str) -> dict[str, Any]:
    """A pydantic error as one sentence naming the field and what is allowed."""
    loc, kind, ctx = tuple(error.get("loc", ())), error.get("type", ""), error.get("ctx") or {}
    name = _field(loc)
    if kind == "json_invalid":
        message = f"the body is not valid JSON ({ctx.get('error', 'decode error')})"
    elif kind == "extra_forbidden":
        message = f"{name} is not a field here; allowed fields: {', '.join(_model_at(loc, path).model_fields)}"
    elif kind == "missing":
        message = f"{name} is required"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"{name} must be a JSON object"
    else:
        message = f"{name}: {error.get('msg', 'invalid')}".replace("Value error, ", "")
    return {"loc": list(loc), "msg": message, "type": kind, "input": _jsonable(error.get("input"))}


def _model_at(loc: tuple, path: str) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` of a request to ``path``."""
    if path == "/v1/feedback":
        return FeedbackEvent
    if path == "/v1/admin/reload":
        return ReloadRequest
    return HistoryEntry if "history" in loc[:-1] else RecommendRequest


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def create_app_from_env() -> FastAPI:
    """uvicorn's factory in each worker process: the config comes through the environment."""
    cfg = build_config(ServeConfig, json.loads(os.environ[CONFIG_ENV]), "")
    _configure_logging(cfg.log_level)
    return create_app(cfg)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(cfg: ServeConfig) -> None:
    """Run the service (blocks): the model of ``cfg`` on uvicorn with ``cfg.workers`` processes."""
    import atexit
    import inspect
    import shutil
    import tempfile

    import uvicorn

    if cfg.run_dir is not None:  # export the run first (once per version)
        cfg.model, cfg.run_dir = str(export_for_serving(cfg)), None
    cfg.model = os.path.abspath(cfg.model)  # not resolved: a symlink stays the watched path
    # fail here, with one clear line, rather than in every worker or after the model has loaded
    _check_port(cfg.host, cfg.port)
    ModelHolder(cfg.model, cfg.backend, cfg.exploration)
    SQLStore(cfg.store).close()
    os.environ[CONFIG_ENV] = json.dumps(asdict(cfg))
    if cfg.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # the workers' metrics, summed
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="rlrec-metrics-")
        atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    options = {}
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
        options["timeout_worker_healthcheck"] = 120  # a worker loads torch and the model before it answers
    uvicorn.run(
        "rlrec.serve.app:create_app_from_env",
        factory=True,
        host=cfg.host,
        port=cfg.port,
        workers=cfg.workers,
        log_level=cfg.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
        **options,
    )


def _check_port(host: str, port: int) -> None:
    import socket

    from rlrec.config import ConfigError

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(info[0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(info[4])
    except OSError as err:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({err.strerror or err}): choose another port= or host=."
        ) from None


def export_for_serving(cfg: ServeConfig) -> Path:
    """``serve.py run_dir=<run>``: the run exported into ``<run_dir>/serving/<version>`` (reused if there)."""
    from rlrec.serve.export import export_run

    settings = cfg.exploration if cfg.exploration.kind != "manifest" else None
    staging = Path(cfg.run_dir) / "serving" / f".new-{os.getpid()}-{threading.get_ident()}"
    export_run(cfg.run_dir, staging, exploration=settings)
    version = json.loads((staging / "manifest.json").read_text())["model_version"]
    final = staging.parent / version
    if final.exists():  # the same weights and settings were exported before
        import shutil

        shutil.rmtree(staging)
    else:
        os.replace(staging, final)
    return final
