"""The exact MDP: the simulator samples it, value iteration solves it, RL is needed on it."""

import math

import pytest
import torch
from conftest import solved_tiny_shop

from rlrec.config import ConfigError, env_preset
from rlrec.eval.rollout import run_sessions
from rlrec.sim.env import Shop
from rlrec.sim.tabular import build_tabular_mdp, evaluate_policy, greedy, myopic_policy, start_value, value_iteration


@pytest.fixture(scope="module")
def tiny():
    return solved_tiny_shop(num_users=4096)


def test_mdp_is_a_distribution(tiny):
    _, mdp, _, _ = tiny
    totals = mdp.outcome_prob.sum(-1)
    live = torch.arange(mdp.n_states) != mdp.terminal
    assert torch.allclose(totals[live], torch.ones_like(totals[live]), atol=1e-12)
    assert torch.allclose(mdp.P.sum(-1), torch.ones(mdp.n_states, mdp.n_actions, dtype=torch.float64), atol=1e-12)
    assert math.isclose(float(mdp.start.sum()), 1.0)


def _state_index(shop, mdp, obs):
    return mdp.state_index(obs, shop.cfg)


def test_simulator_samples_the_enumerated_mdp(tiny):
    """>= 100,000 simulator transitions match P and the reward law (chi-square, p > 0.001)."""
    shop, mdp, _, _ = tiny
    gen = torch.Generator().manual_seed(0)
    obs = shop.reset(seed=0)
    # Every distinct reward value an outcome can pay, so (next state, reward) becomes one cell.
    values = torch.unique(mdp.outcome_reward.round(decimals=4))
    n_cells = mdp.n_states * values.numel()

    def cell(next_state, reward):
        reward_index = torch.searchsorted(values, reward.double().round(decimals=4))
        assert torch.allclose(values[reward_index.clamp_max(values.numel() - 1)], reward.double().round(decimals=4))
        return next_state * values.numel() + reward_index

    counts = torch.zeros(mdp.n_states * mdp.n_actions, n_cells, dtype=torch.float64)
    n = 0
    while n < 120_000:
        s = _state_index(shop, mdp, obs)
        a = torch.randint(mdp.n_actions, (shop.num_users,), generator=gen)
        obs, reward, done, info = shop.step(a.unsqueeze(-1))
        s_next = torch.where(done, torch.full_like(s, mdp.terminal), _state_index(shop, mdp, info["final_obs"]))
        counts.index_put_(
            (s * mdp.n_actions + a, cell(s_next, reward)), torch.ones(s.numel(), dtype=torch.float64), accumulate=True
        )
        n += s.numel()

    expected_law = torch.zeros(mdp.n_states * mdp.n_actions, n_cells, dtype=torch.float64)
    sa = torch.arange(mdp.n_states * mdp.n_actions).view(mdp.n_states, mdp.n_actions, 1).expand_as(mdp.outcome_next)
    out_cell = mdp.outcome_next * values.numel() + torch.searchsorted(values, mdp.outcome_reward.round(decimals=4))
    expected_law.index_put_((sa.reshape(-1), out_cell.reshape(-1)), mdp.outcome_prob.reshape(-1), accumulate=True)
    expected = expected_law * counts.sum(-1, keepdim=True)

    assert counts[expected_law == 0].sum() == 0, "the simulator produced a transition the MDP says is impossible"
    big = expected >= 5
    chi2 = float((((counts - expected) ** 2) / expected)[big].sum())
    # Degrees of freedom: cells used minus one per (s, a) row that has any.
    dof = int(big.sum() - (big.any(-1)).sum())
    p_value = float(
        torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(chi2 / 2, dtype=torch.float64))
    )
    assert dof > 100
    assert p_value > 1e-3, f"chi2 = {chi2:.1f} on {dof} dof, p = {p_value:.2e}"
    # And cell by cell: every well-populated cell within 4.5 standard errors.
    se = (expected * (1 - expected_law)).sqrt()
    z = ((counts - expected).abs() / se.clamp_min(1e-12))[big]
    assert float(z.max()) < 4.5


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
    with pytest.raises(ConfigError, match="slate_size"):
        build_tabular_mdp(Shop(env_preset("tiny", slate_size=2, device="cpu")))
    with pytest.raises(ConfigError, match="preference_noise"):
        build_tabular_mdp(Shop(env_preset("tiny", preference_noise=0.3, device="cpu")))
