"""The decision log: every recommendation a service makes and every feedback event on it, in a database.

One schema (SQLAlchemy Core), so SQLite, the default, and PostgreSQL run the same code: the
store is a URL (``store.path`` becomes ``sqlite:///<path>``; ``store.url`` takes any other).

- ``decisions``: one row per request: its id (unique), time, the model version that served
  it, the context the model saw (user features, history, step, satisfaction), the candidates
  (null: the whole catalog), k, the exploration settings, and a hash of the request.
- ``impressions``: one row per shown position: the item and its propensity (the exact
  probability that the serving policy put it there; :mod:`rlrec.serve.exploration`).
- ``feedback``: one row per (decision, position): click, purchase, rating. Events merge
  upward (a click, purchase or rating once recorded stays), so resending any event, in any
  order, changes nothing: feedback is idempotent.
- ``models``: the manifest of every model that served; ``catalog``: the observable item
  features of the catalog these logs are about (a service with another catalog is refused).

Durability. One writer owns all writes (the event loop's thread for SQLite, a thread of its
own for a server database; :class:`SQLStore`). Records queue up; the writer takes every
record waiting (at most ``max_batch``, after waiting at most ``max_delay_ms`` for more),
writes them in one transaction and commits, and only then are their requests answered. So a
``kill -9`` loses no answered request: what it loses is the requests still in flight (received,
not answered: at most ``max_pending`` records, whose clients get no answer and retry; a
retried request id that had been committed gets its decision back). SQLite runs in WAL mode
(readers never block the writer) with ``synchronous=NORMAL``: a commit survives a crash of
the service; ``FULL`` (an fsync per commit) also survives a crash of the machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlrec.config import ConfigError, StoreConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = "2"


class StoreError(ConfigError):
    """The store cannot be opened or used for these logs (missing, not an rlrec store, another catalog)."""


class StoreUnavailable(RuntimeError):
    """A write failed (disk full, database gone...): the request is answered 503, nothing is half-written."""


class StoreOverloaded(RuntimeError):
    """More than ``max_pending`` records are waiting for the writer: new requests are answered 503."""


def _tables():
    """The schema, built on first use (SQLAlchemy is imported only by what needs the store)."""
    from sqlalchemy import Column, Float, ForeignKey, Integer, MetaData, String, Table, Text

    metadata = MetaData()
    Table(
        "decisions",
        metadata,
        Column("seq", Integer, primary_key=True, autoincrement=True),  # the order decisions were logged in
        Column("request_id", String(64), nullable=False, unique=True),
        Column("request_hash", String(32), nullable=False),
        Column("ts", Float(53), nullable=False),
        Column("model_version", String(64), nullable=False),
        Column("k", Integer, nullable=False),
        Column("user_features", Text, nullable=False),  # JSON lists
        Column("history_items", Text, nullable=False),
        Column("history_codes", Text, nullable=False),
        Column("step", Integer, nullable=False),
        Column("satisfaction", Integer, nullable=True),
        Column("candidates", Text, nullable=True),  # null: the whole catalog
        Column("n_candidates", Integer, nullable=False),
        Column("exploration", Text, nullable=False),
    )
    Table(
        "impressions",
        metadata,
        Column("request_id", String(64), ForeignKey("decisions.request_id"), primary_key=True),
        Column("position", Integer, primary_key=True),
        Column("item", Integer, nullable=False),
        Column("propensity", Float(53), nullable=False),
    )
    Table(
        "feedback",
        metadata,
        Column("request_id", String(64), ForeignKey("decisions.request_id"), primary_key=True),
        Column("position", Integer, primary_key=True),
        Column("click", Integer, nullable=False),
        Column("purchase", Integer, nullable=False),
        Column("rating", Integer, nullable=False),  # 0: none
        Column("ts", Float(53), nullable=False),  # the latest event's time
    )
    Table(
        "models",
        metadata,
        Column("version", String(64), primary_key=True),
        Column("manifest", Text, nullable=False),
        Column("ts", Float(53), nullable=False),
    )
    Table(
        "catalog",
        metadata,
        Column("item", Integer, primary_key=True, autoincrement=False),
        Column("category", Integer, nullable=False),
        Column("brand", Integer, nullable=False),
        Column("price", Float(53), nullable=False),
    )
    Table("meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))
    return metadata


_METADATA = None


def tables():
    """The store's SQLAlchemy ``MetaData`` (``tables()["decisions"]`` ...)."""
    global _METADATA
    if _METADATA is None:
        _METADATA = _tables()
    return _METADATA.tables


def store_url(location: str | Path) -> str:
    """A SQLAlchemy URL for ``location``: a URL as is, a file path as ``sqlite:///<absolute path>``."""
    location = str(location)
    if "://" in location:
        return location
    return f"sqlite:///{Path(location).expanduser().resolve()}"


def open_engine(location: str | Path, *, create: bool, synchronous: str = "NORMAL") -> Any:
    """An engine on the store at ``location``; ``create`` makes the tables (else they must exist)."""
    from sqlalchemy import create_engine, event, inspect, select
    from sqlalchemy.exc import SQLAlchemyError

    url = store_url(location)
    sqlite = url.startswith("sqlite")
    if sqlite and not create:
        file = Path(url.split("///", 1)[1])
        if not file.is_file():
            raise StoreError(f"store {file} does not exist: pass the store a service wrote (its store.path).")
    try:
        engine = create_engine(url, connect_args={"check_same_thread": False} if sqlite else {})
    except (SQLAlchemyError, ImportError, ValueError) as err:
        raise StoreError(f"store {url} cannot be opened ({type(err).__name__}: {err}).") from err
    if engine.dialect.name not in ("sqlite", "postgresql"):
        raise StoreError(f"store {url}: the {engine.dialect.name} dialect is not supported; use sqlite or postgresql.")
    if sqlite:

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers and the writer do not block each other
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA busy_timeout=10000")  # several worker processes take turns writing
            cursor.execute("PRAGMA foreign_keys=ON")
            # no checkpoint inside a commit (it copies the WAL into the database and syncs it,
            # 100s of ms on a slow disk): SQLStore checkpoints from a thread of its own
            cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.close()

    meta = tables()["meta"]
    try:
        if create:
            tables()["decisions"].metadata.create_all(engine)
            with engine.begin() as conn:
                found = conn.execute(select(meta.c.value).where(meta.c.key == "schema")).scalar()
                if found is None:
                    conn.execute(meta.insert().values(key="schema", value=SCHEMA_VERSION))
        else:
            missing = set(tables()) - set(inspect(engine).get_table_names())
            if missing:
                raise StoreError(f"store {url} is not an rlrec decision log (no tables {sorted(missing)}).")
            with engine.connect() as conn:
                found = conn.execute(select(meta.c.value).where(meta.c.key == "schema")).scalar()
    except SQLAlchemyError as err:
        raise StoreError(f"store {url} cannot be used ({type(err).__name__}: {str(err).splitlines()[0]}).") from err
    if found not in (None, SCHEMA_VERSION):
        raise StoreError(f"store {url} has schema version {found}; this rlrec reads version {SCHEMA_VERSION}.")
    return engine


@dataclass
class DecisionRecord:
    """One answered request, as logged."""

    request_id: str
    request_hash: str  # of the request's content: a retried id must carry the same request
    ts: float
    model_version: str
    k: int
    user_features: list[int]
    history_items: list[int]
    history_codes: list[int]
    step: int
    satisfaction: int | None
    candidates: list[int] | None
    n_candidates: int
    exploration: dict[str, Any]
    items: list[int]
    propensities: list[float]


@dataclass
class FeedbackRecord:
    """One feedback event on a shown position (merged into the position's row)."""

    request_id: str
    position: int
    click: int
    purchase: int
    rating: int  # 0: none
    ts: float


@dataclass
class StoredDecision:
    """A decision read back: for feedback (its k) and for a retried request (its answer)."""

    request_id: str
    request_hash: str
    model_version: str
    k: int
    items: list[int]
    propensities: list[float]


LOGGED = object()
"""The result of a decision logged now."""
DUPLICATE = object()
"""The result of a decision whose request id was already logged (the first one stands)."""
_STOP = object()


class SQLStore:
    """The decision log and its one writer (see the module docstring).

    ``await record_decision(r)`` returns :data:`LOGGED` (or :data:`DUPLICATE`) once it is
    committed; ``await record_feedback(r)`` returns once the event is committed. Reads
    (:meth:`find`) run on the caller's thread through their own connection.

    Where the writer runs (``store.writer``): a SQLite commit is a few tens of microseconds of
    local work, less than waking another thread costs, so by default SQLite is written from the
    event loop's own thread (a callback takes every record queued since the last commit); a
    server database, where a commit waits for the network, gets a writer thread of its own.
    Either way one writer does all the writing, in batches.
    """

    def __init__(self, cfg: StoreConfig, on_commit: Callable[[int, float], None] | None = None) -> None:
        from sqlalchemy.dialects import postgresql, sqlite

        self.cfg = cfg
        self.location = cfg.url or cfg.path
        self.engine = open_engine(self.location, create=True, synchronous=cfg.synchronous)
        self._insert = (sqlite if self.engine.dialect.name == "sqlite" else postgresql).insert
        self._sql = self._statements()
        self._on_commit = on_commit
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._connection: Any = None  # the writer's own connection
        self.in_loop = cfg.writer == "loop" or (cfg.writer == "auto" and self.engine.dialect.name == "sqlite")
        self._batch: list = []  # in-loop writer: records since the last commit
        self._scheduled = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # writer thread: records to take
        self._writer = None
        if not self.in_loop:
            self._writer = threading.Thread(target=self._run, name="rlrec-store-writer", daemon=True)
            self._writer.start()
        self._closing = threading.Event()
        if self.engine.dialect.name == "sqlite":
            threading.Thread(target=self._checkpoints, name="rlrec-store-checkpoint", daemon=True).start()

    # ------------------------------------------------------------------ writing
    async def record_decision(self, record: DecisionRecord) -> Any:
        return await self._submit("decision", record)

    async def record_feedback(self, record: FeedbackRecord) -> None:
        await self._submit("feedback", record)

    @property
    def pending(self) -> int:
        """Records waiting for (or in) a commit."""
        return self._pending

    @property
    def healthy(self) -> bool:
        """The writer is running."""
        return self.in_loop or (self._writer is not None and self._writer.is_alive())

    def _submit(self, kind: str, record: Any) -> asyncio.Future:
        with self._pending_lock:
            if self._pending >= self.cfg.max_pending:
                raise StoreOverloaded(f"{self._pending} records are waiting to be logged (store.max_pending)")
            self._pending += 1
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.in_loop:
            self._queue.put((kind, record, future, loop))
            return future
        self._batch.append((kind, record, future, loop))
        if not self._scheduled:  # one commit for everything that arrives before it runs
            self._scheduled = True
            if self.cfg.max_delay_ms > 0:
                loop.call_later(self.cfg.max_delay_ms / 1000, self._flush)
            else:
                loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """In-loop writer: commit what has been queued, ``max_batch`` records at a time."""
        self._scheduled = False
        while self._batch:
            batch, self._batch = self._batch[: self.cfg.max_batch], self._batch[self.cfg.max_batch :]
            _settle(self._commit(batch))

    def _run(self) -> None:
        """Writer thread: take what is queued (waiting at most ``max_delay_ms`` for more), commit, answer."""
        delay = self.cfg.max_delay_ms / 1000
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = [first], False
            deadline = time.monotonic() + delay
            while len(batch) < self.cfg.max_batch:
                try:
                    if delay:
                        item = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                    else:
                        item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            outcome = self._commit(batch)
            for loop in {item[3] for item in batch}:
                mine = [o for o, item in zip(outcome, batch) if item[3] is loop]
                try:
                    loop.call_soon_threadsafe(_settle, mine)
                except RuntimeError:  # the event loop is closed: nobody is waiting
                    pass
            if stop:
                break
        if self._connection is not None:
            self._connection.close()

    def _commit(self, batch: list) -> list[tuple]:
        """Write ``batch`` in one transaction; (future, result, error) per record."""
        started = time.perf_counter()
        try:
            if self._connection is None:
                self._connection = self.engine.connect()
            with self._connection.begin():
                results = self._write(self._connection, batch)
            outcome = [(item[2], result, None) for item, result in zip(batch, results)]
            if self._on_commit is not None:
                self._on_commit(len(batch), time.perf_counter() - started)
        except Exception as err:  # the transaction rolled back: nothing of this batch is stored
            log.error("could not write %d records to the store: %s", len(batch), err)
            failure = StoreUnavailable(f"the decision log could not be written ({type(err).__name__}: {err})")
            outcome = [(item[2], None, failure) for item in batch]
            if self._connection is not None:
                self._connection.invalidate()
                self._connection = None
        with self._pending_lock:
            self._pending -= len(batch)
        return outcome

    def _statements(self) -> dict[str, tuple[str, list[str] | None]]:
        """The hot statements as the database driver's own SQL (compiled once from the schema for
        this dialect) and the order of their parameters (None for drivers that take names): rows
        then go straight to the driver's ``executemany``, without SQLAlchemy's per-call work."""
        t = tables()
        feedback = self._insert(t["feedback"])
        keep_max = {name: _greater(feedback.excluded[name], t["feedback"].c[name]) for name in FEEDBACK}
        statements = {
            "decisions": self._insert(t["decisions"]).on_conflict_do_nothing(index_elements=["request_id"]),
            "impressions": self._insert(t["impressions"]).on_conflict_do_nothing(),
            "feedback": feedback.on_conflict_do_update(index_elements=["request_id", "position"], set_=keep_max),
        }
        columns = {
            "decisions": [c.name for c in t["decisions"].columns if c.name != "seq"],
            "impressions": ["request_id", "position", "item", "propensity"],
            "feedback": ["request_id", "position", *FEEDBACK],
        }
        out = {}
        for name, statement in statements.items():
            compiled = statement.values({c: None for c in columns[name]}).compile(dialect=self.engine.dialect)
            out[name] = (str(compiled), list(compiled.positiontup) if compiled.positional else None)
        return out

    def _many(self, conn: Any, name: str, rows: list[dict[str, Any]]) -> int:
        """``executemany`` of statement ``name`` over ``rows``; the rows it changed."""
        sql, order = self._sql[name]
        params = [tuple(row[c] for c in order) for row in rows] if order is not None else rows
        return conn.exec_driver_sql(sql, params).rowcount

    def _write(self, conn: Any, batch: list) -> list[Any]:
        """Write one batch (inside the caller's transaction); per record, the value its future gets."""
        results: list[Any] = [None] * len(batch)
        decisions = [(i, r) for i, (kind, r, _, _) in enumerate(batch) if kind == "decision"]
        if decisions:
            first: dict[str, int] = {}
            for i, r in decisions:  # a request id twice in one batch: the first stands
                first.setdefault(r.request_id, i)
            fresh = [r for i, r in decisions if first[r.request_id] == i]
            ours = {r.request_id for r in fresh}
            if self._many(conn, "decisions", [_decision_row(r) for r in fresh]) < len(fresh):
                ours = self._ours(conn, fresh)  # some ids were logged before: which rows are this batch's?
            impressions = []
            for i, r in decisions:
                mine = first[r.request_id] == i and r.request_id in ours
                results[i] = LOGGED if mine else DUPLICATE
                if mine:
                    impressions += [
                        {"request_id": r.request_id, "position": j, "item": item, "propensity": p}
                        for j, (item, p) in enumerate(zip(r.items, r.propensities))
                    ]
            if impressions:
                self._many(conn, "impressions", impressions)
        merged: dict[tuple[str, int], dict[str, Any]] = {}
        for kind, r, _, _ in batch:  # events on one position merge first (max), as the upsert does
            if kind == "feedback":
                row = merged.setdefault(
                    (r.request_id, r.position), {"request_id": r.request_id, "position": r.position}
                )
                for name in FEEDBACK:
                    row[name] = max(row.get(name, 0), getattr(r, name))
        if merged:
            self._many(conn, "feedback", list(merged.values()))
        return results

    def _ours(self, conn: Any, records: list[DecisionRecord]) -> set[str]:
        """The request ids of ``records`` whose logged row is the one this batch wrote (same time and hash)."""
        from sqlalchemy import select

        d = tables()["decisions"]
        mine = {r.request_id: (r.ts, r.request_hash) for r in records}
        rows = conn.execute(select(d.c.request_id, d.c.ts, d.c.request_hash).where(d.c.request_id.in_(list(mine))))
        return {row.request_id for row in rows if (row.ts, row.request_hash) == mine[row.request_id]}

    def _checkpoints(self, every: float = 1.0) -> None:
        """SQLite: copy the WAL into the database once a second, off the request path. PASSIVE
        never waits for (nor blocks) the writer or the readers; the WAL is the durable copy meanwhile."""
        while not self._closing.wait(every):
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as err:  # a busy database: the next round catches up
                log.debug("checkpoint skipped: %s", err)

    def close(self) -> None:
        """Commit everything queued, then stop the writer."""
        self._closing.set()
        if self.in_loop:
            self._flush()
            if self._connection is not None:
                self._connection.close()
        else:
            self._queue.put(_STOP)
            self._writer.join()
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:  # leave a small WAL behind
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        self.engine.dispose()

    # ------------------------------------------------------------------ reading
    def find(self, request_id: str) -> StoredDecision | None:
        """The logged decision of ``request_id`` (with its items), or None."""
        from sqlalchemy import select

        t = tables()
        d, i = t["decisions"], t["impressions"]
        with self.engine.connect() as conn:
            row = conn.execute(
                select(d.c.request_hash, d.c.model_version, d.c.k).where(d.c.request_id == request_id)
            ).first()
            if row is None:
                return None
            shown = conn.execute(
                select(i.c.item, i.c.propensity).where(i.c.request_id == request_id).order_by(i.c.position)
            ).all()
        return StoredDecision(
            request_id,
            row.request_hash,
            row.model_version,
            row.k,
            [s.item for s in shown],
            [s.propensity for s in shown],
        )

    def counts(self) -> dict[str, int]:
        """Rows per table (decisions, impressions, feedback, models)."""
        from sqlalchemy import func, select

        with self.engine.connect() as conn:
            return {
                name: int(conn.execute(select(func.count()).select_from(tables()[name])).scalar())
                for name in ("decisions", "impressions", "feedback", "models")
            }

    def register_model(self, manifest: dict[str, Any], catalog: dict[str, list]) -> None:
        """Record a model that serves into this store; refuse a catalog other than the store's."""
        from sqlalchemy import func, select

        t = tables()
        with self.engine.begin() as conn:
            conn.execute(
                self._insert(t["models"]).on_conflict_do_nothing(index_elements=["version"]),
                {"version": manifest["model_version"], "manifest": json.dumps(manifest), "ts": time.time()},
            )
            rows = [
                {"item": i, "category": c, "brand": b, "price": p}
                for i, (c, b, p) in enumerate(zip(catalog["category"], catalog["brand"], catalog["price"]))
            ]
            if not conn.execute(select(func.count()).select_from(t["catalog"])).scalar():
                conn.execute(t["catalog"].insert(), rows)
                return
            stored = conn.execute(select(t["catalog"]).order_by(t["catalog"].c.item)).all()
        if [tuple(r) for r in stored] != [(r["item"], r["category"], r["brand"], r["price"]) for r in rows]:
            raise StoreError(
                f"store {self.location} holds the logs of another catalog ({len(stored)} items) than model "
                f"{manifest['model_version']} ({len(rows)} items): give this service a store of its own "
                "(store.path=...)."
            )


FEEDBACK = ("click", "purchase", "rating", "ts")
"""The feedback columns, each merged by max (a click, purchase or rating once recorded stays)."""


def _decision_row(r: DecisionRecord) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "request_hash": r.request_hash,
        "ts": r.ts,
        "model_version": r.model_version,
        "k": r.k,
        "user_features": json.dumps(r.user_features),
        "history_items": json.dumps(r.history_items),
        "history_codes": json.dumps(r.history_codes),
        "step": r.step,
        "satisfaction": r.satisfaction,
        "candidates": None if r.candidates is None else json.dumps(r.candidates),
        "n_candidates": r.n_candidates,
        "exploration": json.dumps(r.exploration, sort_keys=True),
    }


def _greater(new: Any, old: Any) -> Any:
    """``max(new, old)`` in SQL that SQLite and PostgreSQL both speak."""
    from sqlalchemy import case

    return case((new > old, new), else_=old)


def _settle(items: list) -> None:
    for future, result, error in items:
        if future.done():  # the client went away and the request was cancelled
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
