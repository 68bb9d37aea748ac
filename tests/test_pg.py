"""Policy gradient (rlrec/agents/pg.py): the slate maths, the top-K correction, learning against V*,
off-policy learning from logs, and the train.py workflow (checkpoints, bitwise resume, evaluate.py)."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import DEVICES, solved_tiny_shop
from test_workflow import run

from rlrec.agents import build_agent
from rlrec.agents.base import Agent, AgentSpec
from rlrec.agents.pg import (
    PPOAgent,
    ReinforceAgent,
    gather_rows,
    importance_weight,
    plackett_luce_logp,
    topk_corrected_loss,
    topk_multiplier,
)
from rlrec.config import ConfigError, env_preset
from rlrec.eval.sim_report import read_scalars
from rlrec.sim.env import Shop
from rlrec.sim.tabular import evaluate_policy, greedy_policy_value, n_slates, start_value
from rlrec.train.logged import train_logged_steps
from rlrec.train.loop import train_steps
from rlrec.train.run import load_checkpoint


# ----------------------------------------------------------------------------- slate maths
def test_gather_gives_one_value_per_row_and_slot():
    values = torch.arange(24.0).view(4, 6)  # row m holds 6m .. 6m + 5
    items = torch.tensor([[0, 5], [1, 2], [3, 3], [5, 0]])
    picked = gather_rows(values, items)
    assert picked.shape == (4, 2)  # not [4, 4, 2]: each row reads its own items only
    expected = torch.tensor([[values[m, i] for i in items[m]] for m in range(4)])
    assert torch.equal(picked, expected)
    assert plackett_luce_logp(values.log_softmax(1), items).shape == (4,)


def test_plackett_luce_probabilities_sum_to_one_and_match_sequential_draws():
    logits = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    total = sum(plackett_luce_logp(logits, torch.tensor([s, s])).exp() for s in itertools.permutations(range(5), 3))
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64))
    p = logits.softmax(1)[0]
    expected = math.log(p[3] * p[1] / (1 - p[3]))
    assert float(plackett_luce_logp(logits[:1], torch.tensor([[3, 1]]))) == pytest.approx(expected, abs=1e-12)


def test_topk_multiplier_and_importance_weight_values_and_caps():
    pi = torch.tensor([0.0, 0.5, 0.9])
    torch.testing.assert_close(topk_multiplier(pi, 5, cap=3.0), torch.tensor([3.0, 5 * 0.5**4, 5 * 0.1**4]))
    torch.testing.assert_close(topk_multiplier(pi, 5, cap=10.0), torch.tensor([5.0, 5 * 0.5**4, 5 * 0.1**4]))
    assert torch.equal(topk_multiplier(pi, 1, cap=10.0), torch.ones(3))  # K = 1: plain REINFORCE
    beta = torch.tensor([0.01, 0.4, 0.9])
    torch.testing.assert_close(
        importance_weight(torch.tensor([0.5, 0.2, 0.9]), beta, cap=10.0), torch.tensor([10.0, 0.5, 1.0])
    )


@pytest.mark.parametrize("caps", [(100.0, 100.0), (1.5, 2.0)])
def test_corrected_gradient_matches_finite_differences(caps):
    """The loss's gradient is sum_k w_k lambda_k A grad log pi(a_k): w and lambda held fixed (detached)."""
    g = torch.Generator().manual_seed(0)
    m, n, k = 3, 6, 3
    theta = torch.randn(m, n, generator=g, dtype=torch.float64, requires_grad=True)  # a tiny policy: logits
    items = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(m)])
    beta = torch.rand(m, k, generator=g, dtype=torch.float64) * 0.3 + 0.05
    advantage = torch.randn(m, generator=g, dtype=torch.float64)
    lambda_cap, weight_cap = caps

    def log_pi_items(t):
        return gather_rows(torch.log_softmax(t, 1), items)

    loss = topk_corrected_loss(log_pi_items(theta), beta, advantage, k, lambda_cap, weight_cap)
    (grad,) = torch.autograd.grad(loss, theta)

    with torch.no_grad():
        pi = log_pi_items(theta).exp()
        scale = (pi / beta).clamp(max=weight_cap) * (k * (1 - pi) ** (k - 1)).clamp(max=lambda_cap)
        fd = torch.zeros_like(theta)
        eps = 1e-6
        for idx in itertools.product(range(m), range(n)):
            bump = torch.zeros_like(theta)
            bump[idx] = eps
            f = [-(scale * log_pi_items(theta + s * bump)).sum(1).mul(advantage).mean() for s in (1, -1)]
            fd[idx] = (f[0] - f[1]) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- agents
def tiny_agent(cls, shop, seed, **overrides):
    settings = dict(gamma=1.0, history="none", embed_dim=16, minibatch_size=1024)
    return cls(AgentSpec.from_shop(shop), seed=seed, device="cpu", **{**settings, **overrides})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls", [ReinforceAgent, PPOAgent])
def test_pg_agents_follow_the_protocol_and_train_deterministically(cls, device):
    def train():
        shop = Shop(env_preset("default", device=device, num_users=32, n_items=40, slate_size=3))
        shop.reset(seed=0)
        agent = cls(AgentSpec.from_shop(shop), seed=0, device=device, rollout_len=3, minibatch_size=32)
        assert isinstance(agent, Agent)
        train_steps(shop, agent, 7)
        return shop, agent

    shop, agent = train()
    slate = agent.act(shop.observation(), explore=True)
    assert slate.shape == (32, 3) and bool((slate.sort(1).values.diff(1) > 0).all())  # distinct items
    assert len(agent.rollout) == 1 and agent.updates > 0  # 7 steps: two rollouts learned, one step pending
    _, again = train()
    for key, value in agent.net.state_dict().items():
        assert torch.equal(value, again.net.state_dict()[key]), key


def test_the_acting_policy_reads_only_the_observation():
    """The asymmetric critic's hidden input is used in training; acting never needs it."""
    shop = Shop(env_preset("default", device="cpu", num_users=8, n_items=20))
    agent = PPOAgent(AgentSpec.from_shop(shop), device="cpu", asymmetric=True)
    obs = shop.observation()
    assert "satisfaction" not in obs  # the default shop hides it
    assert agent.act(obs).shape == (8, shop.cfg.slate_size) and agent.act(obs, explore=True).shape == (8, 5)


def test_the_behaviour_head_does_not_train_the_shared_state():
    shop = Shop(env_preset("default", device="cpu", num_users=8, n_items=20))
    agent = ReinforceAgent(AgentSpec.from_shop(shop), device="cpu")
    agent.net.behaviour_logits(agent.net.actor(shop.observation())).logsumexp(1).sum().backward()
    assert agent.net.behaviour.weight.grad is not None
    assert all(p.grad is None for p in agent.net.actor.parameters())


@pytest.mark.parametrize("cls", [ReinforceAgent, PPOAgent])
def test_pg_agents_export_for_serving(cls, tmp_path):
    """The servable form is the policy's logits (their top K is the greedy slate); export traces and checks it."""
    from rlrec.serve.export import export_agent

    shop = Shop(env_preset("default", device="cpu", num_users=8, n_items=30))
    agent = cls(AgentSpec.from_shop(shop), device="cpu")
    obs = shop.observation()
    assert torch.equal(agent.scoring_module()(obs).topk(5).indices, agent.act(obs))
    export_agent(agent, shop.cfg, tmp_path / "v1", onnx=False)
    assert (tmp_path / "v1" / "model.pt").is_file()


@pytest.mark.slow
def test_reinforce_reaches_95_percent_of_v_star_on_the_tiny_shop():
    """Three seeds pooled: the greedy policy's exact value (the MDP of rlrec/sim/tabular.py) >= 95% of V*."""
    shop, mdp, _, v_star = solved_tiny_shop(num_users=256)
    values = []
    for seed in range(3):
        shop.reset(seed=seed)
        agent = tiny_agent(ReinforceAgent, shop, seed)
        train_steps(shop, agent, 800)
        values.append(greedy_policy_value(shop, agent, mdp=mdp)[0])
    assert sum(values) / len(values) >= 0.95 * start_value(mdp, v_star), values


@pytest.mark.slow
def test_ppo_learns_far_above_random_on_the_tiny_shop():
    """Exact values (no sampling error): each seed's greedy PPO policy beats the uniform random policy
    by more than half the gap from random to V*, and the pooled value is >= 95% of V*."""
    shop, mdp, _, v_star = solved_tiny_shop(num_users=256)
    n_actions = n_slates(shop.cfg.n_items, shop.cfg.slate_size)
    random_value = start_value(mdp, evaluate_policy(mdp, torch.full((mdp.n_states, n_actions), 1.0 / n_actions)))
    best = start_value(mdp, v_star)
    values = []
    for seed in range(2):
        shop.reset(seed=seed)
        agent = tiny_agent(PPOAgent, shop, seed)
        train_steps(shop, agent, 500)
        values.append(greedy_policy_value(shop, agent, mdp=mdp)[0])
    assert min(values) >= random_value + 0.5 * (best - random_value), (values, random_value, best)
    assert sum(values) / len(values) >= 0.95 * best, (values, best)


@pytest.mark.parametrize("behaviour", ["logged", "learned"])
def test_off_policy_learning_from_logs_moves_the_policy_to_the_rewarded_item(behaviour):
    """Synthetic logs: a known behaviour shows items with propensities skewed away from item 3, the
    only one that earns a reward; learning from them makes item 3 the policy's choice for every user."""
    shop = Shop(env_preset("default", device="cpu", num_users=512, n_items=10, slate_size=2))
    shop.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    propensity = torch.tensor([0.3, 0.2, 0.15, 0.02, 0.1, 0.05, 0.05, 0.05, 0.04, 0.04], dtype=torch.float64)
    items = torch.multinomial(propensity, 512, replacement=True, generator=g)
    rows = {
        "obs": shop.observation(),
        "item": items,
        "reward": (items == 3).float(),
        "propensity": propensity[items],
    }
    agent = ReinforceAgent(AgentSpec.from_shop(shop), seed=0, device="cpu", behaviour=behaviour, lr=3e-3)
    with torch.no_grad():
        before = agent.net(rows["obs"]).softmax(1)[:, 3].mean()
    train_logged_steps(agent, rows, 60)
    with torch.no_grad():
        probs = agent.net(rows["obs"]).softmax(1)
    assert float(before) < 0.2 and float(probs[:, 3].mean()) > 0.6
    assert bool((agent.act(rows["obs"])[:, 0] == 3).all())
    if behaviour == "learned":  # the behaviour head learned the logged propensities, not the policy
        with torch.no_grad():
            beta = agent.net.behaviour_logits(agent.net.actor(rows["obs"])).softmax(1).mean(0).double()
        assert float((beta - propensity).abs().max()) < 0.1


# ----------------------------------------------------------------------------- workflow
FAST = [
    "env.n_items=40",
    "env.num_users=16",
    "agent.embed_dim=8",
    "agent.hidden_dim=16",
    "agent.rollout_len=3",
    "agent.minibatch_size=16",
    "trainer.log_every=5",
    "trainer.eval_users=32",
    "trainer.progress=false",
]


def _net(run_dir):
    return load_checkpoint(Path(run_dir) / "checkpoint.pt")["agent"]


@pytest.mark.parametrize("name", ["reinforce", "ppo"])
def test_train_checkpoint_resume_bitwise_and_evaluate(tmp_path, name):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = [f"agent={name}", *FAST, "trainer.checkpoint_every=10"]
    run("train.py", *args, "trainer.env_steps=20", f"hydra.run.dir={straight}", cwd=tmp_path)
    run("train.py", *args, "trainer.env_steps=10", f"hydra.run.dir={split}", cwd=tmp_path)
    assert len(_net(split)["rollout"]) == 10 % 3  # stopped mid-rollout: the partial rollout is saved
    run(
        "train.py",
        *args,
        "trainer.env_steps=20",
        "trainer.allow_config_change=true",
        f"hydra.run.dir={split}",
        cwd=tmp_path,
    )
    a, b = _net(straight), _net(split)
    assert a["updates"] == b["updates"] > 0
    for key, value in a["net"].items():
        assert torch.equal(value, b["net"][key]), key
    losses = read_scalars(straight / "tb", "losses/policy_loss")
    assert [step for step, _ in losses] == [5 * 16, 10 * 16, 15 * 16, 20 * 16]  # user-steps
    assert all(math.isfinite(value) for _, value in losses)
    assert read_scalars(straight / "tb", "losses/clipfrac" if name == "ppo" else "losses/behaviour_nll")
    out = tmp_path / "eval"
    run("evaluate.py", f"run_dir={straight}", f"out_dir={out}", "eval_users=32", cwd=tmp_path)
    report = json.loads((out / "eval.json").read_text())
    assert math.isfinite(next(iter(report["policies"].values()))["episodic_return"]["mean"])


def test_train_reinforce_off_policy_from_the_open_bandit_logs(tmp_path):
    args = [
        "agent=reinforce",
        "env=obd",
        "trainer.logged_data=obd",
        "agent.logged_batch_size=256",
        "agent.hidden_dim=16",
    ]
    args += ["trainer.env_steps=6", "trainer.log_every=3", "trainer.checkpoint_every=3", "trainer.eval_users=32"]
    run("train.py", *args, "trainer.progress=false", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["env_step"] == 6 and state["agent"]["updates"] == 6


def test_logged_data_refuses_an_agent_that_cannot_learn_from_logs(tmp_path):
    proc = run(
        "train.py",
        "agent=dqn",
        "env=obd",
        "trainer.logged_data=obd",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "use agent=reinforce" in proc.stdout + proc.stderr


def test_build_agent_from_config_checks_the_hyperparameters():
    shop = Shop(env_preset("default", device="cpu", num_users=8, n_items=20))
    spec = AgentSpec.from_shop(shop)
    agent = build_agent({"_target_": "rlrec.agents.pg.ReinforceAgent", "lambda_cap": 3.0}, spec, seed=0, device="cpu")
    assert agent.hp.lambda_cap == 3.0
    from rlrec.config import ConfigError

    with pytest.raises(ConfigError, match="agent.behaviour"):
        build_agent({"_target_": "rlrec.agents.pg.ReinforceAgent", "behaviour": "guess"}, spec, seed=0, device="cpu")


def test_train_reinforce_off_policy_from_the_service_log(tmp_path):
    """A decision log (rlrec/serve/store.py) of 20 decisions, item 3 always clicked: train.py learns from it."""
    import asyncio
    import time

    from rlrec.config import StoreConfig
    from rlrec.serve.store import DecisionRecord, FeedbackRecord, SQLStore

    n_items, db = 40, tmp_path / "log.db"
    store = SQLStore(StoreConfig(path=str(db)))
    catalog = {"category": [0] * n_items, "brand": [1] * n_items, "price": [2.5] * n_items}
    store.register_model({"model_version": "v1", "user_features": {"sizes": [6, 3, 8]}}, catalog)

    async def log():
        for d in range(20):
            items = [3, (d % 5) + 10, 20]
            record = DecisionRecord(
                f"r{d}",
                f"h{d}",
                time.time(),
                "v1",
                3,
                [1, 0, 2],
                [n_items] * 5,
                [0] * 5,
                0,
                None,
                None,
                n_items,
                {"kind": "softmax"},
                items,
                [0.2, 0.1, 0.3],
            )
            await store.record_decision(record)
            await store.record_feedback(FeedbackRecord(f"r{d}", 0, 1, 0, 0, time.time()))

    asyncio.run(log())
    store.close()
    args = [
        "agent=reinforce",
        "trainer.logged_data=served",
        f"env.logs_path={db}",
        "env.n_items=40",
        "env.slate_size=3",
    ]
    args += ["agent.logged_batch_size=32", "agent.hidden_dim=16", "trainer.env_steps=4", "trainer.eval_users=16"]
    run(
        "train.py", *args, "env.n_items=40", "trainer.progress=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["agent"]["updates"] == 4
    proc = run("train.py", *args, "env.n_items=41", f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "logs a catalog of 40 items" in proc.stdout + proc.stderr


@pytest.mark.parametrize("cls", [ReinforceAgent, PPOAgent])
def test_pg_agents_refuse_a_changing_catalog_and_act_only_on_the_catalog_they_are_given(cls):
    """Trained on a fixed catalog; evaluated on a smaller one, they show only its items."""
    changing = Shop(env_preset("default", device="cpu", num_users=16, n_items=40, holdout_items=0.25))
    with pytest.raises(ConfigError, match="trains on a fixed catalog"):
        cls(AgentSpec.from_shop(changing), seed=0, device="cpu")
    shop = Shop(env_preset("default", device="cpu", num_users=16, n_items=40))
    agent = cls(AgentSpec.from_shop(shop), seed=0, device="cpu")
    available = torch.arange(40) % 4 == 0  # 10 items
    agent.use_catalog(available)
    obs = shop.reset(seed=0)
    for explore in (False, True):
        assert bool(available[agent.act(obs, explore=explore)].all())
