"""The exact MDP of a small shop, value iteration and exact policy evaluation.

A tiny shop (``conf/env/tiny.yaml``: a few user segments with fixed preferences, a few
items, K = 1, no interest drift, satisfaction observed) has a finite Markov state
``(segment, satisfaction, step)``. :func:`build_tabular_mdp` enumerates every outcome of
every (state, action) pair with the *same* response functions the simulator samples from
(:mod:`rlrec.sim.response`), so ``P``, ``R`` and the simulator agree by construction.

State index: ``(segment * L + satisfaction) * T + step``; index ``n_states - 1`` is the
absorbing terminal state (the user left or reached the horizon).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from rlrec.config import ConfigError
from rlrec.sim import response
from rlrec.sim.env import Observation, Shop


@dataclass
class TabularMDP:
    """An episodic MDP given outcome by outcome.

    ``outcome_prob[s, a, o]`` is the probability of outcome ``o`` after action ``a`` in
    state ``s``; it pays ``outcome_reward[s, a, o]`` and leads to ``outcome_next[s, a, o]``.
    Keeping outcomes (not only ``P`` and ``R``) gives the joint law of (next state, reward).
    """

    outcome_prob: torch.Tensor  # [S, A, O] float64 (row S-1, the terminal, is all zeros)
    outcome_next: torch.Tensor  # [S, A, O] long
    outcome_reward: torch.Tensor  # [S, A, O] float64
    start: torch.Tensor  # [S] float64, distribution of the first state
    n_segments: int
    satisfaction_levels: int
    horizon: int

    @property
    def n_states(self) -> int:
        """Number of states, the terminal included."""
        return self.outcome_prob.shape[0]

    @property
    def n_actions(self) -> int:
        return self.outcome_prob.shape[1]

    @property
    def terminal(self) -> int:
        return self.n_states - 1

    @property
    def P(self) -> torch.Tensor:
        """[S, A, S] transition probabilities; the terminal loops to itself."""
        s, a, _ = self.outcome_prob.shape
        p = torch.zeros(s, a, s, dtype=torch.float64)
        p.scatter_add_(2, self.outcome_next, self.outcome_prob)
        p[self.terminal, :, self.terminal] = 1.0
        return p

    @property
    def R(self) -> torch.Tensor:
        """[S, A] expected immediate reward (0 in the terminal)."""
        return (self.outcome_prob * self.outcome_reward).sum(-1)

    def state_index(self, obs: Observation, shape: Any) -> torch.Tensor:
        """[B] state index of simulator observations (``shape``: the shop's config or spec)."""
        return tabular_state_index(obs, shape)


def tabular_state_index(obs: Observation, shape: Any) -> torch.Tensor:
    """[B] index ``(segment * L + satisfaction) * T + step`` of observations of an enumerable shop.

    ``shape`` is anything with the shop's ``user_feature_sizes``, ``satisfaction_levels`` and
    ``horizon``: its :class:`~rlrec.config.EnvConfig` or the agents' :class:`~rlrec.agents.base.AgentSpec`.
    """
    age, gender, region = obs["user_features"].unbind(-1)
    _, n_genders, n_regions = shape.user_feature_sizes
    segment = (age * n_genders + gender) * n_regions + region
    return (segment * shape.satisfaction_levels + obs["satisfaction"]) * shape.horizon + obs["step"]


def state_observations(shop: Shop) -> Observation:
    """One observation per non-terminal state of ``shop``'s exact MDP, in state-index order.

    The history is not part of the MDP state; it is left empty, so a policy that reads it
    is judged at the start-of-session history.
    """
    cfg, dev = shop.cfg, shop.device
    index = torch.arange(n_tabular_states(cfg) - 1, device=dev)
    segment = index // (cfg.horizon * cfg.satisfaction_levels)
    empty = torch.zeros(index.numel(), cfg.history_len, dtype=torch.long, device=dev)
    return {
        "user_features": shop.users.segment_features().to(dev)[segment],
        "step": index % cfg.horizon,
        "satisfaction": (index // cfg.horizon) % cfg.satisfaction_levels,
        "history_items": empty + cfg.n_items,
        "history_codes": empty,
    }


def n_tabular_states(shape: Any) -> int:
    """States of an enumerable shop (``shape`` as in :func:`tabular_state_index`), the terminal included."""
    return math.prod(shape.user_feature_sizes) * shape.satisfaction_levels * shape.horizon + 1


def _require_enumerable(shop: Shop) -> None:
    cfg = shop.cfg
    rules = [
        (cfg.slate_size == 1, "slate_size", "1"),
        (cfg.preference_noise == 0, "preference_noise", "0 (segments must have fixed preferences)"),
        (cfg.price_sensitivity_noise == 0, "price_sensitivity_noise", "0"),
        (cfg.interest_drift == 0, "interest_drift", "0 (interest must not change within a session)"),
        (cfg.observe_satisfaction, "observe_satisfaction", "true (the tabular state includes it)"),
    ]
    for ok, name, allowed in rules:
        if not ok:
            raise ConfigError(
                f"the exact MDP needs env.{name} = {allowed}, got {getattr(cfg, name)!r}; "
                "use env=tiny or set the field."
            )
    states = shop.users.n_segments * cfg.satisfaction_levels * cfg.horizon
    if states * cfg.n_items > 5_000_000:
        raise ConfigError(
            f"the exact MDP would have {states} states x {cfg.n_items} actions; "
            "keep n_segments * satisfaction_levels * horizon * n_items under 5,000,000."
        )


def build_tabular_mdp(shop: Shop) -> TabularMDP:
    """Enumerate the exact MDP of ``shop`` (which must be enumerable: see ``conf/env/tiny.yaml``)."""
    _require_enumerable(shop)
    cfg = shop.cfg
    f64 = torch.float64
    catalog = shop.catalog.to(torch.device("cpu"))
    users = shop.users.to(torch.device("cpu"))
    n_items, levels, horizon = cfg.n_items, cfg.satisfaction_levels, cfg.horizon
    segments = users.segment_features()
    n_seg = segments.shape[0]
    preference, sensitivity = users.traits(segments, generator=None)

    # Response to every (segment, item): click, purchase, rating laws.
    fit = preference.to(f64) @ catalog.latent.to(f64).T  # [G, A]
    slot_bias = response.position_bias(1, cfg, dtype=f64)[0]
    hype = catalog.hype.to(f64).expand_as(fit)
    click = response.click_probs(response.click_utilities(fit, hype, slot_bias, cfg).unsqueeze(-1), cfg)[..., 1]
    sat = torch.arange(levels)
    # Laws over [G, L, A]: purchase depends on satisfaction, click and rating do not.
    buy = response.purchase_prob(
        fit.unsqueeze(1),
        catalog.log_price_centered.to(f64),
        sensitivity.to(f64).view(-1, 1, 1),
        sat.to(f64).view(1, -1, 1),
        cfg,
    )
    click = click.unsqueeze(1).expand_as(buy)
    rating_law = response.rating_probs(catalog.quality.to(f64).expand_as(fit), fit, cfg).unsqueeze(1)  # [G, 1, A, 5]

    # The 8 response outcomes: ignored (penalised or not), clicked only, bought with rating 1..5.
    penalty = cfg.ignore_penalty_prob
    response_prob = torch.cat(
        [
            ((1 - click) * penalty).unsqueeze(-1),
            ((1 - click) * (1 - penalty)).unsqueeze(-1),
            (click * (1 - buy)).unsqueeze(-1),
            (click * buy).unsqueeze(-1) * rating_law,
        ],
        dim=-1,
    )  # [G, L, A, 8]
    rated = torch.tensor([0, 0, 0, 1, 2, 3, 4, 5])
    clicked = torch.tensor([False, False, True, True, True, True, True, True])
    penalized = torch.tensor([True, False, False, False, False, False, False, False])
    price = catalog.price.to(f64).unsqueeze(-1)  # [A, 1]
    outcome_reward = response.reward(clicked, rated > 0, rated, price, cfg).to(f64)  # [A, 8]

    # Satisfaction after each response outcome, then leave or stay: 16 outcomes.
    sat_next = response.next_satisfaction(sat.unsqueeze(-1), rated.unsqueeze(0), penalized.unsqueeze(0), cfg)  # [L, 8]
    leave = response.leave_prob(sat_next, cfg).to(f64)  # [L, 8]

    n_states = n_seg * levels * horizon + 1
    terminal = n_states - 1
    prob = torch.zeros(n_states, n_items, 16, dtype=f64)
    nxt = torch.full((n_states, n_items, 16), terminal, dtype=torch.long)
    rew = torch.zeros(n_states, n_items, 16, dtype=f64)

    g = torch.arange(n_seg).view(-1, 1, 1)
    sl = sat.view(1, -1, 1)
    t = torch.arange(horizon).view(1, 1, -1)
    index = ((g * levels + sl) * horizon + t).reshape(-1)  # [G*L*T] in (g, l, t) order
    # [G, L, T, A, 8] laws, broadcast over steps.
    stay_prob = response_prob.view(n_seg, levels, 1, n_items, 8) * (1 - leave).view(1, levels, 1, 1, 8)
    leave_prob_ = response_prob.view(n_seg, levels, 1, n_items, 8) * leave.view(1, levels, 1, 1, 8)
    stay_prob = stay_prob.expand(n_seg, levels, horizon, n_items, 8)
    leave_prob_ = leave_prob_.expand(n_seg, levels, horizon, n_items, 8)
    next_step = t + 1
    next_segment_state = g.view(-1, 1, 1, 1) * levels + sat_next.view(1, levels, 1, 8)
    next_index = next_segment_state * horizon + next_step.view(1, 1, horizon, 1)  # [G, L, T, 8]
    at_horizon = (next_step >= horizon).view(1, 1, horizon, 1)
    next_index = torch.where(at_horizon, torch.full_like(next_index, terminal), next_index)
    next_index = next_index.unsqueeze(3).expand(n_seg, levels, horizon, n_items, 8)

    prob[index] = torch.cat([stay_prob, leave_prob_], dim=-1).reshape(-1, n_items, 16)
    nxt[index] = torch.cat([next_index, torch.full_like(next_index, terminal)], dim=-1).reshape(-1, n_items, 16)
    rew[index] = (
        outcome_reward.view(1, 1, 1, n_items, 8)
        .repeat(1, 1, 1, 1, 2)
        .expand(n_seg, levels, horizon, n_items, 16)
        .reshape(-1, n_items, 16)
    )

    start = torch.zeros(n_states, dtype=f64)
    start_index = (torch.arange(n_seg) * levels + cfg.initial_satisfaction) * horizon
    start[start_index] = 1.0 / n_seg  # features, hence segments, are drawn uniformly
    return TabularMDP(prob, nxt, rew, start, n_seg, levels, horizon)


def value_iteration(
    mdp: TabularMDP, gamma: float = 1.0, tol: float = 1e-12, max_iter: int = 100_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal ``(Q* [S, A], V* [S])`` in float64 by value iteration (terminal value 0).

    With ``gamma = 1`` it converges because every session ends by the horizon.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma = {gamma} must be in [0, 1].")
    P, R = mdp.P, mdp.R
    v = torch.zeros(mdp.n_states, dtype=torch.float64)
    for _ in range(max_iter):
        q = R + gamma * P @ v
        q[mdp.terminal] = 0.0
        v_new = q.max(dim=1).values
        if (v_new - v).abs().max() <= tol:
            return q, v_new
        v = v_new
    raise RuntimeError(f"value iteration did not converge to {tol} in {max_iter} iterations.")


def policy_matrix(mdp: TabularMDP, policy: torch.Tensor) -> torch.Tensor:
    """[S, A] action probabilities from a deterministic policy [S] (actions) or a stochastic one [S, A]."""
    if policy.dim() == 1:
        return torch.nn.functional.one_hot(policy.long(), mdp.n_actions).to(torch.float64)
    if policy.shape != (mdp.n_states, mdp.n_actions):
        raise ValueError(
            f"policy has shape {tuple(policy.shape)}; expected [{mdp.n_states}] actions "
            f"or [{mdp.n_states}, {mdp.n_actions}] probabilities."
        )
    return policy.to(torch.float64)


def evaluate_policy(mdp: TabularMDP, policy: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """[S] exact value of ``policy`` (deterministic [S] or stochastic [S, A]) by solving the Bellman equation."""
    pi = policy_matrix(mdp, policy)
    p_pi = torch.einsum("sa,sat->st", pi, mdp.P)
    r_pi = (pi * mdp.R).sum(-1)
    live = torch.arange(mdp.n_states) != mdp.terminal
    a = torch.eye(int(live.sum()), dtype=torch.float64) - gamma * p_pi[live][:, live]
    v = torch.zeros(mdp.n_states, dtype=torch.float64)
    v[live] = torch.linalg.solve(a, r_pi[live])
    return v


def greedy(q: torch.Tensor) -> torch.Tensor:
    """[S] argmax action of a Q table (ties go to the lowest item id)."""
    return q.argmax(dim=1)


def myopic_policy(mdp: TabularMDP) -> torch.Tensor:
    """[S] the policy that maximises the expected immediate reward."""
    return greedy(mdp.R)


def occupancy(mdp: TabularMDP, policy: torch.Tensor) -> torch.Tensor:
    """[S] expected number of visits to each state in one session under ``policy``."""
    pi = policy_matrix(mdp, policy)
    p_pi = torch.einsum("sa,sat->st", pi, mdp.P)
    live = torch.arange(mdp.n_states) != mdp.terminal
    a = torch.eye(int(live.sum()), dtype=torch.float64) - p_pi[live][:, live].T
    visits = torch.zeros(mdp.n_states, dtype=torch.float64)
    visits[live] = torch.linalg.solve(a, mdp.start[live])
    return visits


def start_value(mdp: TabularMDP, v: torch.Tensor) -> float:
    """Expected session return from the start distribution."""
    return float(mdp.start @ v)
