"""Agents against the oracle: DQN = tabular exactly, tabular -> Q*, deep DQN -> optimal on the tiny shop."""

import pytest
import torch
from conftest import DEVICES, solved_tiny_shop

from rlrec.agents.base import Agent, AgentSpec, make_transition
from rlrec.agents.baselines import BanditAgent, PopularAgent, RandomAgent
from rlrec.agents.dqn import DQNAgent
from rlrec.agents.replay import ReplayBuffer
from rlrec.agents.tabular_q import TabularQAgent
from rlrec.config import env_preset
from rlrec.sim.env import Shop
from rlrec.sim.privileged import YARDSTICKS, Yardstick
from rlrec.sim.tabular import evaluate_policy, greedy, occupancy, start_value, state_observations
from rlrec.train.loop import train_steps


@pytest.fixture(scope="module")
def oracle():
    return solved_tiny_shop(num_users=8)


def greedy_table(agent, shop, mdp):
    actions = agent.act(state_observations(shop)).squeeze(1).cpu()
    return torch.cat([actions, torch.zeros(1, dtype=torch.long)])  # the terminal's action is moot


def test_agents_follow_the_protocol(small_shop):
    cfg, spec = small_shop.cfg, AgentSpec.from_shop(small_shop)
    agents = [
        RandomAgent(spec, device="cpu"),
        PopularAgent(spec, device="cpu"),
        BanditAgent(spec, device="cpu", learning_starts=64),
        DQNAgent(spec, device="cpu", learning_starts=64),
    ]
    obs = small_shop.reset(seed=0)
    for agent in agents:
        assert isinstance(agent, Agent)
        slate = agent.act(obs, explore=True)
        assert slate.shape == (cfg.num_users, cfg.slate_size) and slate.dtype == torch.long
        assert bool((slate.sort(1).values.diff(1) > 0).all()), "slates hold distinct items"
        probs = agent.action_probs(obs)
        assert probs.shape == (cfg.num_users, cfg.n_items) and probs.dtype == torch.float64
        torch.testing.assert_close(probs.sum(1), torch.ones(cfg.num_users, dtype=torch.float64))
        if not isinstance(agent, RandomAgent):  # deterministic greedy policies: all mass on the slot's item
            greedy = agent.act(obs)
            assert torch.equal(probs.argmax(1), greedy[:, 0]) and bool((probs.max(1).values == 1).all())
            slot = torch.arange(cfg.num_users) % cfg.slate_size  # position-aware: each row its own slot
            in_slot = agent.action_probs(obs, slot)
            assert torch.equal(in_slot.argmax(1), greedy[torch.arange(cfg.num_users), slot])
        result = small_shop.step(slate)
        agent.observe(make_transition(obs, slate, result))
        agent.observe(make_transition(obs, slate, result))
        assert isinstance(agent.update(), dict)
        agent.load_state_dict(agent.state_dict())
        obs = result.obs


def test_yardsticks_act_on_the_shops_hidden_state(small_shop):
    obs = small_shop.reset(seed=0)
    for name in YARDSTICKS:
        slate = Yardstick(name, small_shop).act(obs)
        assert slate.shape == (small_shop.num_users, small_shop.slate_size)
        assert bool((slate.sort(1).values.diff(1) > 0).all()), "slates hold distinct items"
    best = small_shop.expected_item_reward().topk(small_shop.slate_size, dim=1).indices
    assert torch.equal(Yardstick("myopic_oracle", small_shop).act(obs), best)


def test_tabular_action_probs_of_q_star_have_the_optimal_value(oracle):
    """action_probs is the policy: loaded with Q*, the exact MDP values its probabilities at V*."""
    shop, mdp, q, v = oracle
    agent = TabularQAgent(AgentSpec.from_shop(shop), device="cpu")
    agent.q.copy_(q.to(agent.q.dtype))
    probs = agent.action_probs(state_observations(shop))
    terminal_row = torch.nn.functional.one_hot(torch.zeros(1, dtype=torch.long), mdp.n_actions).double()
    value = start_value(mdp, evaluate_policy(mdp, torch.cat([probs, terminal_row])))
    assert value == pytest.approx(start_value(mdp, v), abs=1e-9)
    assert value > 1.2 * start_value(mdp, evaluate_policy(mdp, torch.full_like(q, 1 / mdp.n_actions)))


def test_one_hot_dqn_with_sgd_is_tabular_q_learning(oracle):
    """Same 1,200 transitions, fed one at a time: the Q tables agree to 1e-6."""
    shop, mdp, _, _ = oracle
    alpha, gamma = 0.1, 1.0
    spec = AgentSpec.from_shop(shop)
    tabular = TabularQAgent(spec, lr=alpha, lr_decay_visits=0, gamma=gamma, dtype="float32", device="cpu")
    dqn = DQNAgent(
        spec,
        head="tabular",
        optimizer="sgd",
        lr=alpha,
        gamma=gamma,
        loss="mse",
        target_update_interval=1,
        max_grad_norm=0,
        double_dqn=True,
        device="cpu",
    )
    obs = shop.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    fed = 0
    while fed < 1200:
        slate = torch.randint(shop.n_items, (shop.num_users, 1), generator=gen)
        result = shop.step(slate)
        t = make_transition(obs, slate, result)
        state, next_state = tabular.state(t["obs"]), tabular.state(t["next_obs"])
        next_state = torch.where(t["done"], torch.full_like(next_state, tabular.terminal), next_state)
        for row in range(shop.num_users):  # batch size 1, in a fixed order
            one = slice(row, row + 1)
            tabular.learn(state[one], t["action"][one], t["reward"][one], next_state[one], t["done"][one])
            dqn.learn(
                {
                    "obs": {k: v[one] for k, v in t["obs"].items()},
                    "action": t["action"][one],
                    "rewards": t["reward"][one].unsqueeze(1),
                    "steps": torch.ones(1, dtype=torch.long),
                    "next_obs": {k: v[one] for k, v in t["next_obs"].items()},
                    "done": t["done"][one],
                }
            )
            fed += 1
        obs = result.obs
    table = dqn.q.table.weight.detach()
    assert float(tabular.q.abs().max()) > 1.0  # something was learned
    torch.testing.assert_close(table[:-1], tabular.q[:-1], atol=1e-6, rtol=0)


def test_tabular_q_learning_converges_to_q_star(oracle):
    _, mdp, q_star, v_star = oracle
    shop = Shop(env_preset("tiny", device="cpu", num_users=2048))
    agent = TabularQAgent(
        AgentSpec.from_shop(shop), exploration_steps=1_000_000, eps_end=0.5, lr_decay_visits=100, seed=0, device="cpu"
    )
    train_steps(shop, agent, 2000)
    pi_star = greedy(q_star)
    visited = occupancy(mdp, pi_star) > 0
    visited[mdp.terminal] = False
    states = torch.arange(mdp.n_states)[visited]
    error = (agent.q[states, pi_star[states]] - q_star[states, pi_star[states]]).abs().max()
    assert float(error) <= 0.05 * float(q_star.abs().max())
    value = start_value(mdp, evaluate_policy(mdp, greedy(agent.q)))
    assert value >= 0.99 * start_value(mdp, v_star)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deep_dqn_is_optimal_on_the_tiny_shop(oracle, seed):
    """The embedding DQN (replay, target network) reaches >= 98% of V*, exactly evaluated."""
    _, mdp, _, v_star = oracle
    shop = Shop(env_preset("tiny", device="cpu", num_users=256))
    agent = DQNAgent(
        AgentSpec.from_shop(shop),
        history="none",
        gamma=1.0,
        loss="mse",
        lr=1e-3,
        embed_dim=16,
        batch_size=512,
        learning_starts=2000,
        exploration_steps=300_000,
        eps_end=0.1,
        target_update_interval=100,
        seed=seed,
        device="cpu",
    )
    train_steps(shop, agent, 3000)
    value = start_value(mdp, evaluate_policy(mdp, greedy_table(agent, shop, mdp)))
    assert value >= 0.98 * start_value(mdp, v_star)


# ----------------------------------------------------------------------------- replay
def _obs(step, b=4):
    return {"step": torch.full((b,), step), "user_features": torch.zeros(b, 3, dtype=torch.long)}


def _step(step, reward, done, b=4):
    return {
        "obs": _obs(step, b),
        "action": torch.arange(b),
        "reward": reward,
        "next_obs": _obs(step + 1, b),
        "done": done,
    }


def test_replay_wraps_around_keeping_the_newest():
    buffer = ReplayBuffer(capacity=12, num_users=4, seed=0)
    for step in range(5):  # 3 slots: steps 2, 3, 4 survive
        buffer.add(_step(step, torch.full((4,), float(step)), torch.zeros(4, dtype=torch.bool)))
    assert len(buffer) == 12
    batch = buffer.sample(2000)
    assert set(batch["obs"]["step"].tolist()) == {2, 3, 4}
    assert torch.equal(batch["rewards"][:, 0], batch["obs"]["step"].float())
    assert torch.equal(batch["next_obs"]["step"], batch["obs"]["step"] + 1)
    assert bool((batch["steps"] == 1).all())


def test_replay_never_runs_a_window_across_a_reset():
    buffer = ReplayBuffer(capacity=40, num_users=2, n_step=3, seed=0)
    # user 0's session ends at step 1; user 1 never finishes
    for step in range(6):
        done = torch.tensor([step == 1, False])
        buffer.add(_step(step, torch.ones(2), done, b=2))
    batch = buffer.sample(4000)
    starts = batch["obs"]["step"]
    for row in range(4000):
        s = int(starts[row])
        crosses = s <= 1 and bool(batch["done"][row]) and int(batch["next_obs"]["step"][row]) == 2
        if crosses:  # a window of user 0 that contains the end: stops there, flagged done
            assert int(batch["steps"][row]) == 2 - s
            assert batch["rewards"][row].tolist() == [1.0] * (2 - s) + [0.0] * (1 + s)
    ends = batch["done"]
    assert bool((batch["next_obs"]["step"][ends] == 2).all()), "bootstrap obs is the final one, not the new user's"
    assert bool((starts <= 3).all()), "the 3-step window must lie inside what is held"
    live = ~ends
    assert bool((batch["steps"][live] == 3).all())
    torch.testing.assert_close(batch["rewards"][live], torch.ones_like(batch["rewards"][live]))


def test_dqn_td_target_discounts_by_the_window_length(oracle):
    """``sum_j gamma^j r_j + gamma^k (1 - done) next_value``: done rows never bootstrap, gamma^k is the window's."""
    shop, _, _, _ = oracle
    gamma = 0.9
    agent = DQNAgent(AgentSpec.from_shop(shop), gamma=gamma, n_step=2, device="cpu")
    obs = shop.reset(seed=0)
    rewards = torch.tensor([[1.0, 2.0]] * 8)
    steps = torch.tensor([2, 2, 1, 1] * 2)
    rewards[steps == 1, 1] = 0.0
    done = torch.tensor([True, False] * 4)
    target = agent.td_target(rewards, steps, obs, done)
    discounted = rewards[:, 0] + gamma * rewards[:, 1]
    torch.testing.assert_close(target[done], discounted[done])
    with torch.no_grad():
        next_value = agent.q_target(obs).gather(1, agent.q(obs).argmax(1, keepdim=True)).squeeze(1)
    expected = discounted + gamma ** steps.float() * next_value
    torch.testing.assert_close(target[~done], expected[~done])


@pytest.mark.parametrize("device", DEVICES)
def test_replay_samples_stay_on_the_buffer_device(device):
    buffer = ReplayBuffer(capacity=16, num_users=4, device=device)
    for step in range(4):
        buffer.add(_step(step, torch.ones(4), torch.zeros(4, dtype=torch.bool)))
    batch = buffer.sample(8)
    assert batch["rewards"].device.type == device and batch["obs"]["step"].device.type == device


# ----------------------------------------------------------------------------- determinism, devices
@pytest.mark.parametrize("device", DEVICES)
def test_dqn_training_is_deterministic(device):
    def train():
        shop = Shop(env_preset("default", device=device, num_users=64, n_items=100))
        agent = DQNAgent(AgentSpec.from_shop(shop), learning_starts=256, batch_size=64, device=device, seed=3)
        train_steps(shop, agent, 30)
        return torch.cat([p.detach().flatten().cpu() for p in agent.q.parameters()])

    first, second = train(), train()
    assert torch.equal(first, second)


@pytest.mark.slow
def test_dqn_beats_the_myopic_oracle_and_the_bandit_on_the_default_shop():
    """Reduced learning benchmark at ``python train.py``'s budget (3,000 steps x 256 users): two training seeds
    pooled, 2 x 4,096 evaluation sessions per policy, 95% CIs apart. One seed and 2,048 sessions once failed on
    another CPU (DQN 13.57 ± 0.69 against the bandit's 12.23 ± 0.65): seeds vary more than sessions do."""
    from benchmarks.learning import run

    results = run(
        seeds=2, steps=3000, train_users=256, eval_users=4096, device="cpu", policies=("bandit", "myopic_oracle", "dqn")
    )
    dqn = results["dqn"]
    for rival in ("bandit", "myopic_oracle"):
        other = results[rival]
        assert dqn["return_mean"] - dqn["return_ci95"] > other["return_mean"] + other["return_ci95"], (rival, results)
