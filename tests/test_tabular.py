"""The exact MDP: the simulator samples it, value iteration solves it, RL is needed on it.

K = 1 (the tiny shop) and slates: the tiny shop with K = 2 (20 ordered slates) and the medium
shop (``conf/env/medium.yaml``: 1,201 states, 380 slates).
"""

import itertools
import math

import pytest
import torch
from conftest import solved_shop, solved_tiny_shop

from rlrec.agents.base import AgentSpec
from rlrec.agents.tabular_q import TabularQAgent
from rlrec.config import ConfigError, env_preset
from rlrec.eval.rollout import run_sessions
from rlrec.eval.sim_report import exact_values, format_markdown
from rlrec.sim.env import Shop
from rlrec.sim.tabular import (
    TabularMDP,
    agent_policy,
    all_slates,
    build_tabular_mdp,
    evaluate_policy,
    expected_next_value,
    greedy,
    greedy_policy_value,
    myopic_policy,
    occupancy,
    policy_transitions,
    slate_index,
    start_value,
    value_iteration,
)
from rlrec.train.loop import train_steps


@pytest.fixture(scope="module")
def tiny():
    return solved_tiny_shop(num_users=4096)


@pytest.fixture(scope="module")
def tiny2():
    """The tiny shop with slates of two: 49 states x 20 ordered slates."""
    return solved_shop("tiny", num_users=4096, slate_size=2)


@pytest.fixture(scope="module")
def medium():
    return solved_shop("medium", num_users=4096)


SLATE_SHOPS = ["tiny2", "medium"]


def test_mdp_is_a_distribution(tiny):
    _, mdp, _, _ = tiny
    totals = mdp.outcome_prob.sum(-1)
    live = torch.arange(mdp.n_states) != mdp.terminal
    assert torch.allclose(totals[live], torch.ones_like(totals[live]), atol=1e-12)
    assert torch.allclose(mdp.P.sum(-1), torch.ones(mdp.n_states, mdp.n_actions, dtype=torch.float64), atol=1e-12)
    assert math.isclose(float(mdp.start.sum()), 1.0)


def _state_index(shop, mdp, obs):
    return mdp.state_index(obs, shop.cfg)


def _sample_transitions(shop, mdp, n=120_000):
    """Counts of (state, action) -> (next state, reward) over >= ``n`` simulator transitions under uniformly
    random actions, and the distinct reward values that index the reward part of a cell."""
    gen = torch.Generator().manual_seed(0)
    obs = shop.reset(seed=0)
    # Every distinct reward value an outcome can pay, so (next state, reward) becomes one cell.
    values = torch.unique(mdp.outcome_reward.round(decimals=4))
    n_cells = mdp.n_states * values.numel()

    def cell(next_state, reward):
        # the nearest value: the simulator pays in float32, the MDP in float64
        above = torch.searchsorted(values, reward.double()).clamp(1, values.numel() - 1)
        nearer_below = (reward.double() - values[above - 1]).abs() < (values[above] - reward.double()).abs()
        reward_index = torch.where(nearer_below, above - 1, above)
        assert float((values[reward_index] - reward.double()).abs().max()) < 1e-4
        return next_state * values.numel() + reward_index

    counts = torch.zeros(mdp.n_states * mdp.n_actions, n_cells, dtype=torch.float64)
    seen = 0
    while seen < n:
        s = _state_index(shop, mdp, obs)
        a = torch.randint(mdp.n_actions, (shop.num_users,), generator=gen)
        obs, reward, done, info = shop.step(mdp.slates[a])  # action a shows slate a (with K = 1, item a)
        s_next = torch.where(done, torch.full_like(s, mdp.terminal), _state_index(shop, mdp, info["final_obs"]))
        counts.index_put_(
            (s * mdp.n_actions + a, cell(s_next, reward)), torch.ones(s.numel(), dtype=torch.float64), accumulate=True
        )
        seen += s.numel()
    return counts, values


def _goodness_of_fit(mdp, counts, values):
    """(impossible transitions seen, chi-square p-value, its dof, largest |z| of a well-populated cell) of the
    sampled ``counts`` against the law that ``mdp`` gives each (state, action) row."""
    n_cells = counts.shape[1]
    expected_law = torch.zeros(mdp.n_states * mdp.n_actions, n_cells, dtype=torch.float64)
    sa = torch.arange(mdp.n_states * mdp.n_actions).view(mdp.n_states, mdp.n_actions, 1).expand_as(mdp.outcome_next)
    out_cell = mdp.outcome_next * values.numel() + torch.searchsorted(values, mdp.outcome_reward.round(decimals=4))
    expected_law.index_put_((sa.reshape(-1), out_cell.reshape(-1)), mdp.outcome_prob.reshape(-1), accumulate=True)
    expected = expected_law * counts.sum(-1, keepdim=True)

    impossible = float(counts[expected_law == 0].sum())
    big = expected >= 5
    chi2 = float((((counts - expected) ** 2) / expected)[big].sum())
    # Degrees of freedom: cells used minus one per (s, a) row that has any.
    dof = int(big.sum() - (big.any(-1)).sum())
    p_value = float(
        torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(chi2 / 2, dtype=torch.float64))
    )
    # And cell by cell: the standard error of each well-populated cell.
    se = (expected * (1 - expected_law)).sqrt()
    z_max = float(((counts - expected).abs() / se.clamp_min(1e-12))[big].max())
    return impossible, p_value, dof, z_max


def _assert_samples_match(mdp, counts, values):
    impossible, p_value, dof, z_max = _goodness_of_fit(mdp, counts, values)
    assert impossible == 0, "the simulator produced a transition the MDP says is impossible"
    assert dof > 100
    assert p_value > 1e-3, f"p = {p_value:.2e} on {dof} dof"
    assert z_max < 4.5  # every well-populated cell within 4.5 standard errors


def test_simulator_samples_the_enumerated_mdp(tiny):
    """>= 100,000 simulator transitions match P and the reward law (chi-square, p > 0.001)."""
    shop, mdp, _, _ = tiny
    _assert_samples_match(mdp, *_sample_transitions(shop, mdp))


@pytest.fixture(scope="module")
def tiny2_samples(tiny2):
    shop, mdp, _, _ = tiny2
    return _sample_transitions(shop, mdp)


def test_simulator_samples_the_enumerated_slate_mdp(tiny2, tiny2_samples):
    """K = 2: >= 100,000 transitions under random slates match the slate MDP's (next state, reward) law."""
    _, mdp, _, _ = tiny2
    _assert_samples_match(mdp, *tiny2_samples)


def test_simulator_samples_the_slate_mdp_with_every_reward_term():
    """The same with click and revenue rewards on, so the reward law also checks which slot's price is paid."""
    shop, mdp, _, _ = solved_shop("tiny", num_users=4096, slate_size=2, w_click=0.5, w_revenue=0.02)
    counts, values = _sample_transitions(shop, mdp)
    assert values.numel() > 20  # rewards now differ item by item
    _assert_samples_match(mdp, counts, values)


def _without_slot_effects(mdp):
    shop = Shop(env_preset("tiny", device="cpu", slate_size=2, position_decay=0.0))
    return build_tabular_mdp(shop)  # same catalog and users (the seed), no position bias


def _reversed_slates(mdp):
    swap = slate_index(mdp.slates.flip(-1), mdp.n_items)  # action a gets the law of its slate shown backwards
    fields = {name: getattr(mdp, name) for name in TabularMDP.__dataclass_fields__}
    return TabularMDP(
        **fields
        | {
            "outcome_prob": mdp.outcome_prob[:, swap],
            "outcome_next": mdp.outcome_next[:, swap],
            "outcome_reward": mdp.outcome_reward[:, swap],
        }
    )


@pytest.mark.parametrize("perturb", [_without_slot_effects, _reversed_slates])
def test_the_sampling_test_rejects_a_perturbed_slate_mdp(tiny2, tiny2_samples, perturb):
    """The same samples against an oracle that ignores the slots' position bias, or reads slates backwards: rejected."""
    _, mdp, _, _ = tiny2
    impossible, p_value, _, z_max = _goodness_of_fit(perturb(mdp), *tiny2_samples)
    assert impossible == 0  # the perturbations move probability, they invent no transitions
    assert p_value < 1e-6, (p_value, z_max)  # far past the 1e-3 the true MDP must clear


def test_value_iteration_satisfies_bellman(tiny):
    _, mdp, q, v = tiny
    residual = q - (mdp.R + mdp.P @ v)
    residual[mdp.terminal] = 0
    assert float(residual.abs().max()) < 1e-8
    assert torch.allclose(v, q.max(1).values)
    assert float(v[mdp.terminal]) == 0.0


def test_exact_evaluation_of_the_greedy_policy_is_v_star(tiny):
    _, mdp, q, v = tiny
    assert torch.allclose(evaluate_policy(mdp, greedy(q)), v, atol=1e-8, rtol=0)
    # and of a stochastic policy: uniform is worse than optimal everywhere
    uniform = torch.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions, dtype=torch.float64)
    assert bool((evaluate_policy(mdp, uniform) <= v + 1e-12).all())


def test_monte_carlo_value_of_the_optimal_policy(tiny):
    shop, mdp, q, v = tiny
    policy_table = greedy(q)
    stats = run_sessions(shop, lambda obs: policy_table[_state_index(shop, mdp, obs)].unsqueeze(-1), seed=1)
    returns = stats.session_return
    se = float(returns.std()) / math.sqrt(returns.numel())
    assert abs(float(returns.mean()) - start_value(mdp, v)) < 3 * se


def test_rl_is_needed_on_the_tiny_shop(tiny):
    _, mdp, _, v = tiny
    v_myopic = evaluate_policy(mdp, myopic_policy(mdp))
    assert start_value(mdp, v) >= 1.2 * start_value(mdp, v_myopic)


def test_discounted_value_iteration_converges(tiny):
    _, mdp, _, _ = tiny
    q, v = value_iteration(mdp, gamma=0.9)
    assert torch.allclose(evaluate_policy(mdp, greedy(q), gamma=0.9), v, atol=1e-8, rtol=0)


def test_mdp_refuses_a_shop_it_cannot_enumerate():
    with pytest.raises(ConfigError, match="slate_size"):  # 60 * 59 * 58 slates: too many to enumerate
        build_tabular_mdp(Shop(env_preset("tiny", n_items=60, n_brands=6, slate_size=3, device="cpu")))
    with pytest.raises(ConfigError, match="preference_noise"):
        build_tabular_mdp(Shop(env_preset("tiny", preference_noise=0.3, device="cpu")))


# ----------------------------------------------------------------------------- slates
def test_actions_are_the_ordered_slates_in_lexicographic_order():
    for n, k in [(5, 1), (5, 2), (6, 3), (4, 4), (20, 2)]:
        slates = all_slates(n, k)
        assert torch.equal(slates, torch.tensor(list(itertools.permutations(range(n), k))))
        assert torch.equal(slate_index(slates, n), torch.arange(math.perm(n, k)))
    assert torch.equal(all_slates(5, 1).squeeze(1), torch.arange(5)), "with K = 1, action a is item a"
    with pytest.raises(ValueError, match="twice"):
        slate_index(torch.tensor([[1, 1]]), 5)
    with pytest.raises(ValueError, match="outside"):
        slate_index(torch.tensor([[1, 5]]), 5)


@pytest.mark.parametrize("name", SLATE_SHOPS)
def test_slate_mdp_is_a_distribution(request, name):
    shop, mdp, _, _ = request.getfixturevalue(name)
    k = shop.cfg.slate_size
    assert mdp.n_actions == math.perm(shop.cfg.n_items, k) and mdp.outcome_prob.shape[2] == 4 + 12 * k
    live = torch.arange(mdp.n_states) != mdp.terminal
    totals = mdp.outcome_prob.sum(-1)
    assert torch.allclose(totals[live], torch.ones_like(totals[live]), atol=1e-12)
    assert float(totals[mdp.terminal].abs().max()) == 0.0
    assert bool((mdp.outcome_prob >= 0).all())
    assert int(mdp.outcome_next.min()) >= 0 and int(mdp.outcome_next.max()) == mdp.terminal
    uniform = torch.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions, dtype=torch.float64)
    p_pi, _ = policy_transitions(mdp, uniform)
    assert torch.allclose(p_pi[live].sum(-1), torch.ones(int(live.sum()), dtype=torch.float64), atol=1e-12)
    assert math.isclose(float(mdp.start.sum()), 1.0)


@pytest.mark.parametrize("name", SLATE_SHOPS)
def test_slate_value_iteration_satisfies_bellman(request, name):
    """The residual is computed outcome by outcome, apart from the solver's own path."""
    _, mdp, q, v = request.getfixturevalue(name)
    backup = mdp.R + (mdp.outcome_prob * v[mdp.outcome_next]).sum(-1)
    residual = q - backup
    residual[mdp.terminal] = 0
    assert float(residual.abs().max()) < 1e-8
    assert torch.allclose(v, q.max(1).values)
    assert float(v[mdp.terminal]) == 0.0
    assert torch.allclose(expected_next_value(mdp, v), (mdp.outcome_prob * v[mdp.outcome_next]).sum(-1), atol=1e-12)


def test_slate_solvers_agree_with_the_dense_transition_tensor(tiny2):
    _, mdp, q, v = tiny2
    residual = q - (mdp.R + mdp.P @ v)
    residual[mdp.terminal] = 0
    assert float(residual.abs().max()) < 1e-8
    pi = greedy(q)
    p_pi, _ = policy_transitions(mdp, pi)
    dense = mdp.P[torch.arange(mdp.n_states), pi]
    assert torch.allclose(p_pi[:-1], dense[:-1], atol=1e-12)
    # The solvers' general path (outcome tensors that are not broadcast views) gives the same answers.
    fields = {name: getattr(mdp, name) for name in TabularMDP.__dataclass_fields__}
    general = TabularMDP(
        **fields | {"outcome_next": mdp.outcome_next.contiguous(), "outcome_reward": mdp.outcome_reward.contiguous()}
    )
    assert torch.allclose(value_iteration(general)[1], v, atol=1e-12)
    uniform = torch.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions, dtype=torch.float64)
    assert torch.allclose(evaluate_policy(general, uniform), evaluate_policy(mdp, uniform), atol=1e-12)


@pytest.mark.parametrize("name", SLATE_SHOPS)
def test_exact_evaluation_of_the_greedy_slate_policy_is_v_star(request, name):
    _, mdp, q, v = request.getfixturevalue(name)
    assert torch.allclose(evaluate_policy(mdp, greedy(q)), v, atol=1e-8, rtol=0)
    uniform = torch.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions, dtype=torch.float64)
    v_uniform = evaluate_policy(mdp, uniform)
    assert bool((v_uniform <= v + 1e-12).all())
    # a stochastic policy is its mixture: half optimal, half uniform
    one_hot = torch.nn.functional.one_hot(greedy(q), mdp.n_actions).double()
    half = evaluate_policy(mdp, 0.5 * one_hot + 0.5 * uniform)
    assert start_value(mdp, v_uniform) < start_value(mdp, half) < start_value(mdp, v)


@pytest.mark.parametrize("name", SLATE_SHOPS)
def test_monte_carlo_value_of_the_optimal_slate_policy(request, name):
    """The optimal slate policy played in the simulator: mean return and session length agree with V* and the
    occupancy (within 3 standard errors, 4,096 sessions)."""
    shop, mdp, q, v = request.getfixturevalue(name)
    pi = greedy(q)
    stats = run_sessions(shop, lambda obs: mdp.slates[pi[_state_index(shop, mdp, obs)]], seed=1)
    for sampled, exact in [
        (stats.session_return, start_value(mdp, v)),
        (stats.length.double(), float(occupancy(mdp, pi)[:-1].sum())),
    ]:
        se = float(sampled.std()) / math.sqrt(sampled.numel())
        assert abs(float(sampled.mean()) - exact) < 3 * se, (float(sampled.mean()), exact, se)


@pytest.mark.parametrize(("name", "ratio"), [("tiny2", 1.3), ("medium", 1.5)])
def test_rl_is_needed_on_the_slate_shops(request, name, ratio):
    """The best slate for the next step (the myopic slate policy) is far from optimal over the session."""
    _, mdp, _, v = request.getfixturevalue(name)
    v_myopic = evaluate_policy(mdp, myopic_policy(mdp))
    assert start_value(mdp, v) >= ratio * start_value(mdp, v_myopic)


def test_medium_shop_is_enumerable_and_big_enough(medium):
    shop, mdp, _, _ = medium
    cfg = shop.cfg
    assert mdp.n_states >= 1000 and cfg.n_items >= 20 and cfg.slate_size == 2 and cfg.observe_satisfaction
    assert cfg.preference_noise == cfg.price_sensitivity_noise == cfg.interest_drift == 0


# ----------------------------------------------------------------------------- agents against the slate oracle
@pytest.mark.parametrize("name", ["tiny", "tiny2", "medium"])
def test_greedy_policy_value_of_agents(request, name):
    """greedy_policy_value asks an agent for its slates in every state and evaluates them exactly."""
    shop, mdp, q, v = request.getfixturevalue(name)
    agent = TabularQAgent(AgentSpec.from_shop(shop), device="cpu")
    agent.q.copy_(q)
    value, v_star = greedy_policy_value(shop, agent, mdp=mdp)
    assert v_star == pytest.approx(start_value(mdp, v), abs=1e-12)
    assert value == pytest.approx(v_star, abs=1e-9)
    myopic = mdp.slates[myopic_policy(mdp)]
    policy = agent_policy(shop, lambda obs: myopic[_state_index(shop, mdp, obs)])
    assert torch.equal(policy[:-1], myopic_policy(mdp)[:-1])
    if shop.cfg.slate_size > 1:  # the same slates shown backwards are worth less: slot order matters
        backwards = mdp.slates[greedy(q)].flip(-1)
        policy = agent_policy(shop, lambda obs: backwards[_state_index(shop, mdp, obs)])
        assert start_value(mdp, evaluate_policy(mdp, policy)) < v_star - 0.05


def test_evaluate_report_has_exact_values_on_a_slate_shop(tiny2):
    shop, mdp, q, v = tiny2
    agent = TabularQAgent(AgentSpec.from_shop(shop), device="cpu")
    agent.q.copy_(q)
    oracle = exact_values(shop, agent)
    assert oracle["v_star"] == pytest.approx(start_value(mdp, v)) and oracle["ratio"] == pytest.approx(1.0)
    assert (oracle["states"], oracle["slates"], oracle["slate_size"]) == (49, 20, 2)
    report = {"eval_users": 1, "eval_seed": 0, "checkpoint": "-", "env_steps": 0, "policies": {}, "oracle": oracle}
    assert "49 states, 20 slates of 2" in format_markdown(report)


def test_tabular_q_learning_converges_to_q_star_over_slates(tiny2):
    """agent=tabular_q with K = 2: actions are slate indices; Q-learning on the simulator nears V* (the myopic
    slate policy has 66% of it) after 2M transitions."""
    _, mdp, q_star, v_star = tiny2
    shop = Shop(env_preset("tiny", device="cpu", num_users=2048, slate_size=2))
    agent = TabularQAgent(
        AgentSpec.from_shop(shop), exploration_steps=1_000_000, eps_end=0.5, lr_decay_visits=30, seed=0, device="cpu"
    )
    assert agent.q.shape == (mdp.n_states, mdp.n_actions)
    train_steps(shop, agent, 1000)
    value, optimal = greedy_policy_value(shop, agent, mdp=mdp)
    assert value >= 0.95 * optimal
