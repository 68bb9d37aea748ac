"""The recommendation service: exported models, exact propensities, the decision log, the HTTP API
(the real server in a subprocess), hot swaps and kill -9 under load, and the loop back into evaluation."""

import asyncio
import collections
import importlib.util
import itertools
import json
import math
import random
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from conftest import DEVICES
from test_hardening import _one_error_line
from test_workflow import FAST, run

from rlrec.agents.base import AgentSpec
from rlrec.agents.baselines import BanditAgent, PopularAgent, RandomAgent
from rlrec.agents.dqn import DQNAgent
from rlrec.agents.tabular_q import TabularQAgent
from rlrec.config import ConfigError, ExplorationConfig, ServeConfig, StoreConfig, build_config, env_preset
from rlrec.data.obd import LoggedData
from rlrec.data.served import load_served
from rlrec.serve.exploration import decide, draw, plackett_luce_marginals, position_marginals
from rlrec.serve.export import example_observation, export_agent, export_run, input_names, publish
from rlrec.serve.model import ModelError, load_model
from rlrec.serve.process import ServiceProcess
from rlrec.serve.store import DUPLICATE, LOGGED, DecisionRecord, FeedbackRecord, SQLStore, StoreError
from rlrec.serve.traffic import play, run_loop
from rlrec.sim import response
from rlrec.sim.env import Shop
from rlrec.train.run import load_run

N_ITEMS = 60


def small_shop(**overrides):
    return Shop(env_preset("default", **{"device": "cpu", "num_users": 4, "n_items": N_ITEMS, **overrides}))


def make_agent(kind, seed=0, device="cpu"):
    """An agent of each servable kind with non-trivial (random, not trained) parameters."""
    if kind == "tabular_q":
        shop = Shop(env_preset("tiny", device=device, num_users=4))
        agent = TabularQAgent(AgentSpec.from_shop(shop), device=device, seed=seed)
        agent.q.copy_(torch.randn(agent.q.shape, generator=torch.Generator().manual_seed(seed), dtype=agent.q.dtype))
        return agent, shop.cfg
    shop = small_shop(device=device)
    spec = AgentSpec.from_shop(shop)
    small = dict(buffer_size=64, batch_size=8, embed_dim=8, hidden_dim=16)
    if kind == "dqn":
        return DQNAgent(spec, device=device, seed=seed, **small), shop.cfg
    if kind == "dqn_content":  # content vectors, and held-out items whose ids the network does not know
        shop = small_shop(device=device, content_dim=6, holdout_items=0.2)
        agent = DQNAgent(AgentSpec.from_shop(shop), device=device, seed=seed, **small)
        with torch.no_grad():  # a bias that matters: unknown items must be scored without theirs
            agent.q.item_bias.copy_(torch.randn(N_ITEMS, generator=torch.Generator().manual_seed(seed)))
        shop.open_catalog()  # a service recommends from the whole catalog (the agent holds the same mask)
        return agent, shop.cfg
    if kind == "dqn_mlp_gru":
        return DQNAgent(spec, device=device, seed=seed, head="mlp", history="gru", **small), shop.cfg
    if kind == "bandit":
        return BanditAgent(spec, device=device, seed=seed, **small), shop.cfg
    if kind == "popular":
        agent = PopularAgent(spec, device=device, seed=seed)
        agent.purchases += torch.rand(N_ITEMS, generator=torch.Generator().manual_seed(seed)).to(device) * 10
        return agent, shop.cfg
    return RandomAgent(spec, device=device, seed=seed), shop.cfg


def own_scores(agent, obs):
    """[B, N] the scores the agent acts on, read from its own state (not from its scoring module)."""
    if isinstance(agent, TabularQAgent):
        return agent.q[agent.state(obs)]
    if isinstance(agent, DQNAgent):  # and the bandit
        return agent.q(obs)
    batch = obs["user_features"].shape[0]
    if isinstance(agent, PopularAgent):
        return agent.purchases.float().expand(batch, -1)
    return torch.zeros(batch, agent.spec.n_items)  # random: every item alike


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["dqn", "dqn_mlp_gru", "dqn_content", "bandit", "popular", "random", "tabular_q"])
def test_exported_scores_equal_the_agents_own(kind, device, tmp_path):
    """TorchScript and ONNX reproduce the scores the agent acts on (1e-5) on random observations of any
    batch size, and their top K is the agent's greedy slate."""
    ort = pytest.importorskip("onnxruntime")
    agent, env_cfg = make_agent(kind, device=device)
    out = export_agent(agent, env_cfg, tmp_path / "model")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["onnx"] == "model.onnx" and manifest["n_items"] == agent.spec.n_items
    traced = torch.jit.load(str(out / "model.pt"))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = input_names(agent.spec.observe_satisfaction)
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 37):
        obs = example_observation(agent.spec, batch, generator)
        with torch.no_grad():
            eager = own_scores(agent, {k: v.to(device) for k, v in obs.items()}).cpu()
            scripted = traced(*(obs[n] for n in names))
        feed = {i.name: obs[i.name].numpy() for i in session.get_inputs()}  # ONNX keeps the inputs it reads
        onnx = torch.from_numpy(session.run(None, feed)[0])
        assert eager.shape == (batch, agent.spec.n_items)
        torch.testing.assert_close(scripted, eager, atol=1e-5, rtol=0)
        torch.testing.assert_close(onnx, eager.to(onnx.dtype), atol=1e-5, rtol=0)
        if kind not in ("random", "tabular_q"):  # random: its greedy slate is arbitrary; tabular_q: argmax ties
            greedy = agent.act({k: v.to(device) for k, v in obs.items()}).cpu()
            assert torch.equal(scripted.topk(agent.spec.slate_size, dim=1).indices, greedy)


def test_content_is_part_of_the_exported_model(tmp_path):
    """catalog.json carries the content vectors, and the exported scores depend on them (the item
    vectors are computed from them at export): other content, other scores."""
    agent, env_cfg = make_agent("dqn_content")
    out = export_agent(agent, env_cfg, tmp_path / "model", onnx=False)
    catalog = json.loads((out / "catalog.json").read_text())
    assert torch.equal(torch.tensor(catalog["content"]), agent.spec.item_content)
    obs = example_observation(agent.spec, 5, torch.Generator().manual_seed(3))
    names = input_names(agent.spec.observe_satisfaction)
    before = torch.jit.load(str(out / "model.pt"))(*(obs[n] for n in names))
    agent.q.items.item_content.mul_(-1)  # other content vectors, same weights
    other = export_agent(agent, env_cfg, tmp_path / "other", onnx=False)
    after = torch.jit.load(str(other / "model.pt"))(*(obs[n] for n in names))
    assert (after - before).abs().max() > 1e-3


def test_the_artifact_loads_without_rlrec(tmp_path):
    """model.pt needs torch alone and model.onnx ONNX Runtime alone: rlrec is made unimportable."""
    agent, env_cfg = make_agent("dqn")
    out = export_agent(agent, env_cfg, tmp_path / "model")
    obs = example_observation(agent.spec, 5, torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = agent.scoring_module()(obs)
    (tmp_path / "inputs.json").write_text(json.dumps({k: v.tolist() for k, v in obs.items()}))
    script = f"""
import sys, json
sys.modules["rlrec"] = None  # any import of rlrec now fails
import numpy, torch, onnxruntime
model = "{out}"
manifest = json.load(open(model + "/manifest.json"))
inputs = json.load(open("{tmp_path}/inputs.json"))
args = [torch.tensor(inputs[n]) for n in manifest["inputs"]]
scripted = torch.jit.load(model + "/model.pt")(*args)
session = onnxruntime.InferenceSession(model + "/model.onnx", providers=["CPUExecutionProvider"])
onnx = session.run(None, {{i.name: numpy.array(inputs[i.name]) for i in session.get_inputs()}})[0]
print(json.dumps([scripted.tolist(), onnx.tolist()]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    scripted, onnx = (torch.tensor(x) for x in json.loads(proc.stdout))
    torch.testing.assert_close(scripted, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(onnx, expected, atol=1e-5, rtol=0)


def test_a_damaged_or_foreign_artifact_is_refused(tmp_path):
    agent, env_cfg = make_agent("dqn")
    out = export_agent(agent, env_cfg, tmp_path / "model", onnx=False)
    assert load_model(out).version.startswith("dqn-")
    with pytest.raises(ModelError, match="not found: model= must be a directory written by"):
        load_model(tmp_path)
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export_agent(agent, env_cfg, out)
    blob = bytearray((out / "model.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (out / "model.pt").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="model.pt does not match its sha256 in the manifest"):
        load_model(out)


# ----------------------------------------------------------------------------- exact propensities
def enumerated_plackett_luce(logits, k):
    """[k, m] P(item at position) by summing the probability of every ordered k-prefix (in logs)."""
    values = logits.tolist()
    table = torch.zeros(k, len(values), dtype=torch.float64)
    for prefix in itertools.permutations(range(len(values)), k):
        left, log_p = set(range(len(values))), 0.0
        for item in prefix:
            top = max(values[i] for i in left)
            log_p += values[item] - top - math.log(sum(math.exp(values[i] - top) for i in left))
            left.discard(item)
        for position, item in enumerate(prefix):
            table[position, item] += math.exp(log_p)
    return table


@pytest.mark.parametrize("scale", [0.01, 1.0, 5.0, 40.0, 1000.0])
def test_plackett_luce_marginals_equal_the_enumeration(scale):
    """Every position of every item, from nearly uniform to nearly deterministic weights (and one
    pair of items far ahead of the rest): computed = the sum over all orderings, to 1e-10."""
    generator = torch.Generator().manual_seed(int(scale * 100))
    m, k = 7, 5
    for logits in (
        torch.randn(m, generator=generator, dtype=torch.float64) * scale,
        torch.cat(
            [
                torch.tensor([60.0, 59.0], dtype=torch.float64),
                torch.randn(m - 2, generator=generator, dtype=torch.float64),
            ]
        )
        * scale,
    ):
        exact = enumerated_plackett_luce(logits, k)
        item, position = torch.arange(m).repeat(k), torch.arange(k).repeat_interleave(m)
        computed = plackett_luce_marginals(logits.expand(m * k, -1), item, position).view(k, m)
        assert (computed - exact).abs().max() < 1e-10
        torch.testing.assert_close(computed.sum(1), torch.ones(k, dtype=torch.float64), atol=1e-10, rtol=0)


SETTINGS = [
    ExplorationConfig(kind="greedy"),
    ExplorationConfig(kind="epsilon_greedy", epsilon=0.3),
    ExplorationConfig(kind="softmax", epsilon=0.0, temperature=0.5, pool=6),
    ExplorationConfig(kind="softmax", epsilon=0.2, temperature=2.0, pool=4),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"{s.kind}-{s.epsilon}")
@pytest.mark.parametrize("candidates", [None, [0, 2, 3, 5, 7, 8, 9]])
def test_propensities_are_the_samplers_frequencies(settings, candidates):
    """The propensities the service logs are the exact position marginals of its sampler: each
    position's table sums to 1 over the items, every logged propensity is the table's entry, and
    40,000 draws of the sampler land at the table's frequencies (within 4.5 standard errors)."""
    n_items, k, draws = 10, 3, 40_000
    scores = torch.tensor([0.3, 2.0, -1.0, 1.5, 0.0, 2.2, -0.5, 1.0, 0.8, 0.1])
    table = position_marginals(scores, k, settings, candidates)
    torch.testing.assert_close(table.sum(1), torch.ones(k, dtype=torch.float64), atol=1e-12, rtol=0)
    if candidates is not None:
        outside = [i for i in range(n_items) if i not in candidates]
        assert float(table[:, outside].abs().sum()) == 0.0

    decisions = decide(scores.expand(200, -1), [k] * 200, [candidates] * 200, settings, list(range(200)))
    for d in decisions:
        assert len(set(d.items)) == k and (candidates is None or set(d.items) <= set(candidates))
        for j, (item, p) in enumerate(zip(d.items, d.propensities)):
            assert abs(p - float(table[j, item])) < 1e-9

    eps = 0.0 if settings.kind == "greedy" else settings.epsilon
    n = n_items if candidates is None else len(candidates)
    m = min(max(settings.pool, k), n) if settings.kind == "softmax" else k
    masked = scores.clone()
    if candidates is not None:
        masked[[i for i in range(n_items) if i not in candidates]] = -math.inf
    top = masked.topk(m)
    logits = (top.values.double() / settings.temperature).tolist() if settings.kind == "softmax" else None
    rng, pool = random.Random(0), top.indices.tolist()
    counts = collections.Counter(
        (j, item) for _ in range(draws) for j, item in enumerate(draw(pool, logits, k, n, candidates, eps, rng)[0])
    )
    frequency = torch.zeros(k, n_items, dtype=torch.float64)
    for (j, item), count in counts.items():
        frequency[j, item] = count / draws
    tolerance = 4.5 * (table * (1 - table) / draws).sqrt() + 1e-12
    assert bool(((frequency - table).abs() <= tolerance).all()), (frequency - table).abs().max()


# ----------------------------------------------------------------------------- the decision log
def _record(request_id, items=(3, 1), propensities=(0.5, 0.25)):
    return DecisionRecord(
        request_id,
        "hash-" + request_id,
        time.time(),
        "v1",
        len(items),
        [1, 0, 2],
        [N_ITEMS] * 5,
        [0] * 5,
        0,
        None,
        None,
        N_ITEMS,
        {"kind": "greedy"},
        list(items),
        list(propensities),
    )


@pytest.mark.parametrize("via, writer", [("path", "loop"), ("url", "thread")])
def test_the_store_logs_decisions_and_merges_feedback(tmp_path, via, writer):
    """Decisions go in once per request id; feedback merges upward and is idempotent; what
    load_served reads back is a LoggedData with the logged items, positions, propensities and clicks.
    (The writer on the event loop's thread, SQLite's default, and on a thread of its own.)"""
    db = tmp_path / "log.db"
    cfg = (
        StoreConfig(path=str(db), writer=writer) if via == "path" else StoreConfig(url=f"sqlite:///{db}", writer=writer)
    )
    store = SQLStore(cfg)
    catalog = {"category": [0] * N_ITEMS, "brand": [1] * N_ITEMS, "price": [2.5] * N_ITEMS}
    store.register_model({"model_version": "v1", "user_features": {"sizes": [6, 3, 8]}}, catalog)

    async def scenario():
        first, again = await asyncio.gather(store.record_decision(_record("a")), store.record_decision(_record("a")))
        second = await store.record_decision(_record("b", (7, 8, 9), (0.1, 0.2, 0.3)))
        retried = await store.record_decision(_record("b", (7, 8, 9), (0.1, 0.2, 0.3)))  # in a later batch
        events = [("a", 1, 1, 0, 0), ("a", 1, 1, 1, 4), ("a", 1, 1, 0, 0), ("b", 2, 0, 0, 0)]
        await asyncio.gather(*(store.record_feedback(FeedbackRecord(*e, time.time())) for e in events))
        await store.record_feedback(FeedbackRecord("a", 1, 1, 0, 0, time.time()))  # a late duplicate
        return first, again, second, retried

    first, again, second, retried = asyncio.run(scenario())
    assert (first, again, second, retried) == (LOGGED, DUPLICATE, LOGGED, DUPLICATE)
    assert store.find("a").items == [3, 1] and store.find("nope") is None
    with pytest.raises(StoreError, match="holds the logs of another catalog"):
        store.register_model({"model_version": "v2"}, {**catalog, "price": [3.0] * N_ITEMS})
    store.close()

    data = load_served(db if via == "path" else f"sqlite:///{db}")
    assert isinstance(data, LoggedData) and len(data) == 5 and data.n_items == N_ITEMS
    assert data.action.tolist() == [3, 1, 7, 8, 9] and data.position.tolist() == [0, 1, 0, 1, 2]
    assert data.propensity.tolist() == [0.5, 0.25, 0.1, 0.2, 0.3]
    assert data.click.tolist() == [0, 1, 0, 0, 0] and data.purchase.tolist() == [0, 1, 0, 0, 0]
    assert data.rating.tolist() == [0, 4, 0, 0, 0] and data.feedback.tolist() == [False, True, False, False, True]
    assert data.decision.tolist() == [0, 0, 1, 1, 1] and data.request_ids == ["a", "b"]
    assert data.user_features.shape == (5, 3) and data.history_items.shape == (5, 5)
    with pytest.raises(StoreError, match="does not exist"):
        load_served(tmp_path / "missing.db")


# ----------------------------------------------------------------------------- the service over HTTP
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two versions of a small model (same shop, different weights), epsilon-greedy 0.2."""
    root = tmp_path_factory.mktemp("models")
    settings = ExplorationConfig(kind="epsilon_greedy", epsilon=0.2)
    return [
        export_agent(make_agent("dqn", seed=s)[0], make_agent("dqn")[1], root / f"v{s}", exploration=settings)
        for s in (1, 2)
    ]


@pytest.fixture(scope="module")
def service(exported, tmp_path_factory):
    store = tmp_path_factory.mktemp("store") / "served.db"
    with ServiceProcess(exported[0], store, "seed=7", "reload_interval_s=0") as s:
        s.store = store
        yield s


def test_recommend_then_feedback_round_trip_through_the_store(service):
    with httpx.Client(base_url=service.url, timeout=10) as client:
        body = {
            "request_id": "rt-1",
            "user_features": [2, 1, 5],
            "step": 1,
            "history": [{"item": 4, "response": "purchased", "rating": 5}],
        }
        answer = client.post("/v1/recommend", json=body)
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert got["request_id"] == "rt-1" and len(got["items"]) == 5 == len(set(got["items"]))
        eps, n = 0.2, N_ITEMS
        for p in got["propensities"]:  # a greedy item, or one drawn by the uniform branch
            assert p == pytest.approx(1 - eps + eps / n) or p == pytest.approx(eps / n)
        event = {"request_id": "rt-1", "position": 2, "click": True, "purchase": True, "rating": 4}
        assert client.post("/v1/feedback", json=event).json() == {"request_id": "rt-1", "position": 2, "stored": True}
        assert client.post("/v1/feedback", json=event).status_code == 200  # idempotent
        assert client.post(
            "/v1/feedback", json=[{**event, "position": 0, "click": False, "purchase": False, "rating": None}]
        ).json() == {"stored": 1}
        # a retry with the same id gets the logged answer; the same id for another request is refused
        retry = client.post("/v1/recommend", json=body)
        assert retry.json() == got and retry.headers["Idempotent-Replay"] == "true"
        other = client.post("/v1/recommend", json={**body, "step": 2})
        assert other.status_code == 409 and "already used for another request" in other.json()["error"]
        unknown = client.post("/v1/feedback", json={**event, "request_id": "never-issued"})
        assert unknown.status_code == 404 and "unknown request_id 'never-issued'" in unknown.json()["error"]

    data = load_served(service.store)
    rows = [r for r in range(len(data)) if data.request_ids[int(data.decision[r])] == "rt-1"]
    assert [int(data.action[r]) for r in rows] == got["items"]
    assert [float(data.propensity[r]) for r in rows] == got["propensities"]
    assert [int(data.click[r]) for r in rows] == [0, 0, 1, 0, 0]
    assert [int(data.purchase[r]) for r in rows] == [0, 0, 1, 0, 0] and int(data.rating[rows[2]]) == 4
    assert data.history_items[rows[0]].tolist() == [N_ITEMS] * 4 + [4]
    assert data.history_codes[rows[0]].tolist() == [0] * 4 + [response.PURCHASED + 4]


GOOD = {"user_features": [1, 2, 3], "history": [{"item": 5, "response": "clicked"}], "step": 1}
BAD_REQUESTS = [
    # (endpoint, body, what the 422 must say)
    ("recommend", b'{"user_features": [1, 2', "the body is not valid JSON"),
    ("recommend", [1, 2, 3], "the body must be a JSON object"),
    ("recommend", {"history": []}, "user_features is required"),
    ("recommend", {**GOOD, "user_features": "1,2,3"}, "user_features: Input should be a valid array"),
    ("recommend", {**GOOD, "user_features": [1, 2]}, "user_features must hold 3 values (age_band, gender, region)"),
    ("recommend", {**GOOD, "user_features": [1, 9, 3]}, "user_features[1] gender must be in 0..2"),
    ("recommend", {**GOOD, "user_features": [-1, 0, 0]}, "user_features[0] age_band must be in 0..5"),
    ("recommend", {**GOOD, "user_features": [1, "2", 3]}, "user_features[1]: Input should be a valid integer"),
    ("recommend", {**GOOD, "colour": "red"}, "colour is not a field here; allowed fields: request_id, user_features"),
    (
        "recommend",
        {**GOOD, "history": [{"item": 60, "response": "clicked"}]},
        "history[0].item must be an item id in 0..59",
    ),
    (
        "recommend",
        {**GOOD, "history": [{"item": 1, "response": "bought"}]},
        "history[0].response: Input should be 'ignored', 'clicked' or 'purchased'",
    ),
    (
        "recommend",
        {**GOOD, "history": [{"item": 1, "response": "clicked", "rating": 3}]},
        "a rating (1..5) comes with response 'purchased'",
    ),
    ("recommend", {**GOOD, "k": 61}, "k must be in 1..60 (the candidates)"),
    ("recommend", {**GOOD, "k": 0}, "k: Input should be greater than or equal to 1"),
    ("recommend", {**GOOD, "candidates": [0, 500]}, "candidates[1] must be an item id in 0..59"),
    ("recommend", {**GOOD, "candidates": [3, 3, 4]}, "candidates must be distinct item ids"),
    ("recommend", {**GOOD, "k": 3, "candidates": [1, 2]}, "k must be in 1..2 (the candidates)"),
    ("recommend", {**GOOD, "step": 31}, "step must be in 0..30 (the session horizon)"),
    ("recommend", {**GOOD, "step": 1.5}, "step: Input should be a valid integer"),
    ("recommend", {**GOOD, "satisfaction": 2}, "satisfaction is not an input of this model: leave it out"),
    ("recommend", {**GOOD, "request_id": "a b"}, "request_id: String should match pattern"),
    (
        "feedback",
        {"request_id": "rt-1", "position": 7, "click": True},
        "position must be in 0..4: request 'rt-1' showed 5 items",
    ),
    (
        "feedback",
        {"request_id": "rt-1", "position": 0, "click": False, "purchase": True},
        "purchase = true needs click = true",
    ),
    (
        "feedback",
        {"request_id": "rt-1", "position": 0, "click": True, "purchase": True, "rating": 6},
        "rating: Input should be less than or equal to 5",
    ),
    ("feedback", {"request_id": "rt-1", "position": 0, "click": "maybe"}, "click: Input should be a valid boolean"),
    ("feedback", {"request_id": "rt-1", "click": True}, "position is required"),
]


@pytest.mark.parametrize("endpoint, body, message", BAD_REQUESTS, ids=[m[:40] for _, _, m in BAD_REQUESTS])
def test_bad_input_is_a_422_naming_the_field(service, endpoint, body, message):
    with httpx.Client(base_url=service.url, timeout=10) as client:
        client.post("/v1/recommend", json={**GOOD, "request_id": "rt-1"})  # the id the feedback cases use
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = client.post(f"/v1/{endpoint}", content=content, headers={"content-type": "application/json"})
        assert answer.status_code == 422, answer.text
        assert message in answer.json()["error"], answer.json()
        assert client.get("/healthz").status_code == 200  # the service goes on


def test_health_model_and_metrics(service, exported):
    with httpx.Client(base_url=service.url, timeout=10) as client:
        health = client.get("/healthz").json()
        manifest = json.loads((exported[0] / "manifest.json").read_text())
        assert health["status"] == "ok" and health["model_version"] == manifest["model_version"]
        model = client.get("/v1/model").json()
        expected_backend = "onnx" if importlib.util.find_spec("onnxruntime") else "torchscript"  # backend=auto
        assert model["model_version"] == manifest["model_version"] and model["backend"] == expected_backend
        assert model["exploration"] == {"kind": "epsilon_greedy", "epsilon": 0.2, "temperature": 1.0, "pool": 100}
        for key in ("env_fingerprint", "n_items", "slate_size", "user_features", "rlrec_version", "sha256"):
            assert key in model["manifest"]
        client.post("/v1/recommend", json={"user_features": [9, 9, 9]})
        text = client.get("/metrics").text
    assert 'rlrec_requests_total{endpoint="/v1/recommend",status="200"}' in text
    assert 'rlrec_errors_total{endpoint="/v1/recommend",status="422"}' in text
    assert 'rlrec_request_seconds_bucket{endpoint="/v1/recommend",le="0.01"}' in text
    assert f'rlrec_model_info{{version="{manifest["model_version"]}"}} 1.0' in text


def test_candidates_and_k_are_honoured(service):
    with httpx.Client(base_url=service.url, timeout=10) as client:
        candidates = [4, 8, 15, 16, 23, 42]
        for _ in range(20):
            got = client.post("/v1/recommend", json={**GOOD, "k": 3, "candidates": candidates}).json()
            assert len(got["items"]) == 3 and set(got["items"]) <= set(candidates)
            for p in got["propensities"]:
                assert p == pytest.approx(0.8 + 0.2 / 6) or p == pytest.approx(0.2 / 6)


# ----------------------------------------------------------------------------- hot swap and kill -9
async def _load(url, stop, seen, prefix, failures, body=GOOD):
    """One client: recommend requests back to back until ``stop`` is set; (request id, version) in ``seen``."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for i in itertools.count():
            if stop.is_set():
                return
            request_id = f"{prefix}-{i}"
            try:
                answer = await client.post("/v1/recommend", json={**body, "request_id": request_id})
            except httpx.TransportError as err:
                failures.append((request_id, repr(err)))
                return
            if answer.status_code != 200:
                failures.append((request_id, answer.status_code))
                continue
            seen.append((request_id, answer.json()))


def test_hot_swap_under_load_fails_no_request(exported, tmp_path):
    """Publishing a new version at the watched path, then swapping back through the admin endpoint,
    while 8 clients send requests: no request fails, each client sees v1 .. v2 .. v1 in that order,
    and the log records the version that answered each request."""
    v1, v2 = (json.loads((m / "manifest.json").read_text())["model_version"] for m in exported)
    current = tmp_path / "current"
    publish(exported[0], current)
    store = tmp_path / "swap.db"
    with ServiceProcess(current, store, "reload_interval_s=0.2") as service:

        async def scenario():
            stop, seen, failures = asyncio.Event(), [[] for _ in range(8)], []
            clients = [asyncio.create_task(_load(service.url, stop, seen[c], f"c{c}", failures)) for c in range(8)]
            async with httpx.AsyncClient(base_url=service.url, timeout=30) as admin:

                async def wait_for(version):
                    for _ in range(300):
                        if (await admin.get("/healthz")).json()["model_version"] == version:
                            return
                        await asyncio.sleep(0.05)
                    raise AssertionError(f"{version} was never served")

                await asyncio.sleep(1.0)
                publish(exported[1], current)  # the watched path now names v2
                await wait_for(v2)
                await asyncio.sleep(1.0)
                refused = await admin.post("/v1/admin/reload", json={"path": str(tmp_path / "nowhere")})
                swapped = await admin.post("/v1/admin/reload", json={"path": str(exported[0])})
                await asyncio.sleep(1.0)
                stop.set()
                await asyncio.gather(*clients)
                metrics = (await admin.get("/metrics")).text
            return seen, failures, refused, swapped, metrics

        seen, failures, refused, swapped, metrics = asyncio.run(scenario())
    assert failures == []
    assert refused.status_code == 409 and "model not swapped" in refused.json()["error"]
    assert swapped.json() == {"previous": v2, "model_version": v1, "swapped": True}
    assert "rlrec_model_swaps_total 2.0" in metrics and "rlrec_model_reload_failures_total 1.0" in metrics
    assert f'rlrec_model_info{{version="{v1}"}} 1.0' in metrics and f'rlrec_model_info{{version="{v2}"}} 0.0' in metrics
    for client in seen:
        versions = [v for v, _ in itertools.groupby(answer["model_version"] for _, answer in client)]
        assert versions == [v1, v2, v1], versions
    data = load_served(store)
    logged = dict(zip(data.request_ids, data.model_versions))
    answered = [(rid, answer["model_version"]) for client in seen for rid, answer in client]
    assert len(answered) > 100 and all(logged[rid] == version for rid, version in answered)


def test_kill_9_under_load_loses_no_answered_request(exported, tmp_path):
    """kill -9 while 16 clients send recommendations and feedback; restarted on the same store,
    every answered decision and every acknowledged feedback event is there, intact."""
    store = tmp_path / "crash.db"
    answered, acknowledged = {}, []

    async def client(url, c, stop):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for i in itertools.count():
                if stop.is_set():
                    return
                rid = f"k{c}-{i}"
                try:
                    got = await http.post("/v1/recommend", json={**GOOD, "request_id": rid})
                    if got.status_code != 200:
                        continue
                    answered[rid] = got.json()
                    event = {"request_id": rid, "position": i % 5, "click": bool(i % 2)}
                    if (await http.post("/v1/feedback", json=event)).status_code == 200:
                        acknowledged.append(event)
                except httpx.TransportError:
                    return  # the service is gone

    # commits wait up to 20 ms for company: a wide window between a request's arrival and its commit
    service = ServiceProcess(exported[0], store, "seed=3", "store.max_delay_ms=20").start()
    try:

        async def scenario():
            stop = asyncio.Event()
            tasks = [asyncio.create_task(client(service.url, c, stop)) for c in range(16)]
            while len(answered) < 300:
                await asyncio.sleep(0.05)
            service.kill()  # mid-load: requests are in flight
            await asyncio.wait_for(asyncio.gather(*tasks), 60)

        asyncio.run(scenario())
    finally:
        service.kill()
    assert service.proc.returncode == -9
    assert sqlite3.connect(store).execute("PRAGMA integrity_check").fetchone() == ("ok",)

    with ServiceProcess(exported[0], store, "seed=3") as restarted, httpx.Client(base_url=restarted.url) as http:
        assert http.post("/v1/recommend", json=GOOD).status_code == 200  # serves on the same store
    data = load_served(store)
    index = {rid: d for d, rid in enumerate(data.request_ids)}
    for rid, got in answered.items():
        rows = (data.decision == index[rid]).nonzero().squeeze(1)
        assert data.action[rows].tolist() == got["items"] and data.propensity[rows].tolist() == got["propensities"]
    clicks = {
        (data.request_ids[int(d)], int(p)): int(c)
        for d, p, c, f in zip(data.decision, data.position, data.click, data.feedback)
        if f
    }
    for event in acknowledged:
        assert clicks[(event["request_id"], event["position"])] == int(event["click"])
    assert len(answered) >= 300 and len(acknowledged) >= 250


def test_two_worker_processes_share_the_store_and_sum_their_metrics(exported, tmp_path):
    """workers=2: each request on a new connection (the kernel hands connections to either
    worker); feedback finds its decision whichever worker logged it; /metrics sums both."""
    store = tmp_path / "workers.db"
    with ServiceProcess(exported[0], store, "workers=2") as service:
        for i in range(60):
            got = httpx.post(f"{service.url}/v1/recommend", json={**GOOD, "request_id": f"w{i}"}, timeout=10)
            assert got.status_code == 200, got.text
            event = {"request_id": f"w{i}", "position": 1, "click": True}
            assert httpx.post(f"{service.url}/v1/feedback", json=event, timeout=10).status_code == 200
        text = httpx.get(f"{service.url}/metrics", timeout=10).text
    assert 'rlrec_requests_total{endpoint="/v1/recommend",status="200"} 60.0' in text
    assert 'rlrec_requests_total{endpoint="/v1/feedback",status="200"} 60.0' in text
    data = load_served(store)
    assert (
        len(data.request_ids) == 60
        and int(data.click.sum()) == 60
        and set(data.position[data.click > 0].tolist()) == {1}
    )


# ----------------------------------------------------------------------------- the command lines
def test_serve_and_evaluate_report_bad_input_in_one_line(tmp_path, exported):
    cases = [
        ("serve.py", [], "say what to serve: run_dir="),
        ("serve.py", [f"model={tmp_path}"], "manifest.json not found"),
        (
            "serve.py",
            [f"model={exported[0]}", "port=70000"],
            "port = 70000 is invalid: it must be an integer >= 1 and <= 65535",
        ),
        ("serve.py", [f"run_dir={tmp_path}/nope"], "is not a directory: pass the output directory of a train run"),
        ("evaluate.py", ["env=served"], "env.logs_path = None is invalid"),
        ("evaluate.py", ["env=served", f"env.logs_path={tmp_path}/none.db"], "none.db does not exist"),
    ]

    def attempt(case):
        script, args, message = case
        proc = run(script, *args, f"hydra.run.dir={tmp_path}/h", cwd=tmp_path, check=False)
        return script, args, _one_error_line(proc, message)

    with ThreadPoolExecutor(max_workers=3) as pool:
        failures = [f"{script} {args}: {problems}" for script, args, problems in pool.map(attempt, cases) if problems]
    assert not failures, "\n".join(failures)


def test_serving_settings_are_checked_and_served_logs_are_no_shop():
    with pytest.raises(ConfigError, match="exploration.kind = 'thompson' is invalid: it must be one of 'manifest'"):
        build_config(ServeConfig, {"model": "m", "exploration": {"kind": "thompson"}}, "")
    with pytest.raises(ConfigError, match="store.max_batch = 0 is invalid: it must be an integer >= 1"):
        build_config(ServeConfig, {"model": "m", "store": {"max_batch": 0}}, "")
    with pytest.raises(ConfigError, match="run_dir=a and model=m are both set"):
        build_config(ServeConfig, {"model": "m", "run_dir": "a"}, "")
    with pytest.raises(ConfigError, match="env=served is a service's decision log, not a shop"):
        Shop(env_preset("served", logs_path="x.db"))


# ----------------------------------------------------------------------------- the loop, end to end
def first_step_click_rate(run_dir, users=200_000, seed=999):
    """The greedy policy of a run, measured directly in its shop: the exact click probability of the
    item it shows at a session's first step, averaged over ``users`` new customers."""
    loaded = load_run(run_dir / "checkpoint.pt", num_users=1, device="cpu")
    shop = Shop(loaded.shop.cfg, num_users=users)
    obs = shop.reset(seed=seed)
    slate = loaded.agent.act(obs)
    fit = torch.bmm(shop.catalog.latent[slate], shop.state.interest.unsqueeze(-1)).squeeze(-1)
    utilities = response.click_utilities(fit, shop.catalog.hype[slate], response.position_bias(1, shop.cfg), shop.cfg)
    return float((1 - response.click_probs(utilities, shop.cfg)[:, 0]).mean())


@pytest.mark.slow
def test_train_export_serve_then_estimate_a_policy_from_the_served_logs(tmp_path):
    """Train a DQN briefly (one item per request), export it with softmax exploration (the logging
    policy), serve it, play 4,096 new customers' first requests over HTTP with their feedback, then
    estimate from the served logs the click rate of the *greedy* policy of the same run (a second
    policy: no exploration). Its IPS interval covers the value measured directly in the shop.

    With one item per request and first steps only, IPS estimates exactly that: the expected click
    probability of the item the greedy policy would show, over the logged customers (who arrive as
    the shop's customers do, whatever the logging policy).
    """
    run_dir = tmp_path / "run"
    run("train.py", *FAST, "env.slate_size=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    logging_policy = ExplorationConfig(kind="softmax", temperature=0.05, epsilon=0.1)
    model = export_run(run_dir, tmp_path / "model", exploration=logging_policy)
    store = tmp_path / "served.db"
    with ServiceProcess(model, store, "seed=11") as service:
        traffic = run_loop(play(service.url, 4096, concurrency=64, max_steps=1, seed=5, feedback_batches=True))
    assert traffic.requests == traffic.feedback == 4096 and traffic.errors == 0

    run(
        "evaluate.py",
        "env=served",
        f"env.logs_path={store}",
        f"run_dir={run_dir}",
        "ope.n_boot=400",
        f"out_dir={tmp_path}/eval",
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["logs"]["decisions"] == 4096 and report["logs"]["clicks"] == traffic.clicks
    estimate = report["policies"]["trained (dqn)"]["click"]["ips"]
    truth = first_step_click_rate(run_dir)
    assert estimate["ci_low"] <= truth <= estimate["ci_high"], (estimate, truth)
    assert estimate["ci_high"] - estimate["ci_low"] < 0.08, estimate  # informative, not merely wide
    served = report["policies"]["served"]["click"]["on_policy"]["value"]
    assert served == pytest.approx(traffic.clicks / traffic.requests)
