"""The exact MDP of a small shop, value iteration and exact policy evaluation.

An enumerable shop (``conf/env/tiny.yaml``, ``conf/env/medium.yaml``: a few user segments
with fixed preferences, a few items, no interest drift, satisfaction observed) has a finite
Markov state ``(segment, satisfaction, step)``. :func:`build_tabular_mdp` enumerates every
outcome of every (state, slate) pair with the *same* response functions the simulator
samples from (:mod:`rlrec.sim.response`), so the MDP and the simulator agree by construction.

State index: ``(segment * L + satisfaction) * T + step``; index ``n_states - 1`` is the
absorbing terminal state (the user left or reached the horizon).

Actions are ordered slates: every sequence of K distinct items, in lexicographic order
(the order of ``itertools.permutations(range(N), K)``), so there are N! / (N - K)! of them
and with K = 1 action ``a`` is item ``a``. :func:`all_slates` and :func:`slate_index` map
between action indices and slates.

Outcomes of one step: the user ignores the slate (with or without the satisfaction
penalty) or clicks slot k and then does not buy or buys and rates 1..5, i.e. 2 + 6K
response outcomes; then the user stays or leaves: ``4 + 12K`` outcomes in all, ordered
``[stay: ignored-penalised, ignored, (slot 0: clicked, rated 1..5), (slot 1: ...), ...;
leave: the same]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from rlrec.config import ConfigError
from rlrec.sim import response
from rlrec.sim.env import Observation, Shop

MAX_OUTCOME_NUMBERS = 80_000_000
"""Largest ``outcome_prob`` the builder makes (states x slates x outcomes float64: 640 MB)."""

MAX_DENSE_P_NUMBERS = 50_000_000
"""Largest dense ``P`` [S, A, S] that :attr:`TabularMDP.P` makes (400 MB); the solvers never need it."""


@dataclass
class TabularMDP:
    """An episodic MDP given outcome by outcome.

    ``outcome_prob[s, a, o]`` is the probability of outcome ``o`` after action ``a`` in
    state ``s``; it pays ``outcome_reward[s, a, o]`` and leads to ``outcome_next[s, a, o]``.
    Keeping outcomes (not only ``P`` and ``R``) gives the joint law of (next state, reward).

    :func:`build_tabular_mdp` returns ``outcome_next`` and ``outcome_reward`` as broadcast
    views (``expand``: the next state does not depend on the slate, the reward not on the
    state), so they cost no memory; treat them as read-only. The terminal row's outcomes
    have probability 0, so its rewards and next states are never used.
    """

    outcome_prob: torch.Tensor  # [S, A, O] float64 (row S-1, the terminal, is all zeros)
    outcome_next: torch.Tensor  # [S, A, O] long
    outcome_reward: torch.Tensor  # [S, A, O] float64
    start: torch.Tensor  # [S] float64, distribution of the first state
    n_segments: int
    satisfaction_levels: int
    horizon: int
    slates: torch.Tensor  # [A, K] long: the slate of each action (all_slates order)

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
    def slate_size(self) -> int:
        return self.slates.shape[1]

    @property
    def n_items(self) -> int:
        return int(self.slates.max()) + 1

    @property
    def P(self) -> torch.Tensor:
        """[S, A, S] transition probabilities; the terminal loops to itself. Dense: for small MDPs and
        tests only (the solvers work on the outcomes, see :func:`expected_next_value`)."""
        s, a, _ = self.outcome_prob.shape
        if s * a * s > MAX_DENSE_P_NUMBERS:
            raise ValueError(
                f"the dense P of this MDP would hold {s} x {a} x {s} = {s * a * s:,} numbers; "
                "use outcome_prob and outcome_next (as value_iteration and evaluate_policy do)."
            )
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

    def action_index(self, slate: torch.Tensor) -> torch.Tensor:
        """[B] action index of slates [B, K] (see :func:`slate_index`)."""
        return slate_index(slate, self.n_items)


# ----------------------------------------------------------------------------- slates <-> actions
def n_slates(n_items: int, slate_size: int) -> int:
    """Ordered slates of ``slate_size`` distinct items out of ``n_items``: N! / (N - K)!."""
    return math.perm(n_items, slate_size)


def all_slates(n_items: int, slate_size: int) -> torch.Tensor:
    """[N! / (N - K)!, K] long: every ordered slate, in lexicographic order (action ``a`` shows row ``a``).

    Built slot by slot: each slate of k items is extended by every unused item, in
    increasing id order, which keeps the rows sorted. A loop over the K slots only.
    """
    slates = torch.zeros(1, 0, dtype=torch.long)
    for k in range(slate_size):
        items = torch.arange(n_items).expand(slates.shape[0], n_items)
        unused = (items.unsqueeze(-1) != slates.unsqueeze(1)).all(-1)  # [A_k, N], N - k per row
        prefixes = slates.repeat_interleave(n_items - k, dim=0)
        slates = torch.cat([prefixes, items[unused].unsqueeze(-1)], dim=1)
    return slates


def slate_index(slate: torch.Tensor, n_items: int, check: bool = True) -> torch.Tensor:
    """[...] long: the action index of each slate [..., K] of distinct item ids (the inverse of :func:`all_slates`).

    The lexicographic rank: slot k's item is the d_k-th of the items not shown before it,
    and ``sum_k d_k * (N-1-k)! / (N-K)!`` counts the slates that come earlier. ``check``
    validates the ids (a host sync; learners in a hot loop pass False).
    """
    slate = slate.long()
    k_slots = slate.shape[-1]
    if check and slate.numel():
        if int(slate.min()) < 0 or int(slate.max()) >= n_items:
            raise ValueError(f"slates hold item ids outside 0..{n_items - 1}.")
        if bool((slate.unsqueeze(-1) == slate.unsqueeze(-2)).sum((-1, -2)).gt(k_slots).any()):
            raise ValueError("a slate shows an item twice; an action is a slate of distinct items.")
    index = torch.zeros(slate.shape[:-1], dtype=torch.long, device=slate.device)
    for k in range(k_slots):
        earlier_smaller = (slate[..., :k] < slate[..., k : k + 1]).sum(-1)
        index += (slate[..., k] - earlier_smaller) * math.perm(n_items - 1 - k, k_slots - 1 - k)
    return index


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


def enumeration_problem(cfg: Any) -> str | None:
    """Why the shop configured by ``cfg`` (an :class:`~rlrec.config.EnvConfig`) cannot be enumerated, or None.

    The one home of the rules: :func:`build_tabular_mdp` raises the answer as a
    :class:`ConfigError`; reports skip the exact values when there is one.
    """
    rules = [
        (cfg.logs == "", "logs", "'' (a synthetic shop; a shop fitted to logs has non-uniform segments)"),
        (cfg.preference_noise == 0, "preference_noise", "0 (segments must have fixed preferences)"),
        (cfg.price_sensitivity_noise == 0, "price_sensitivity_noise", "0"),
        (cfg.interest_drift == 0, "interest_drift", "0 (interest must not change within a session)"),
        (cfg.observe_satisfaction, "observe_satisfaction", "true (the tabular state includes it)"),
    ]
    for ok, name, allowed in rules:
        if not ok:
            return (
                f"the exact MDP needs env.{name} = {allowed}, got {getattr(cfg, name)!r}; "
                "use env=tiny or env=medium, or set the field."
            )
    states = math.prod(cfg.user_feature_sizes) * cfg.satisfaction_levels * cfg.horizon
    slates = n_slates(cfg.n_items, cfg.slate_size)
    outcomes = n_outcomes(cfg.slate_size)
    numbers = states * slates * outcomes
    if numbers > MAX_OUTCOME_NUMBERS:
        return (
            f"the exact MDP would have {states:,} states x {slates:,} slates x {outcomes} outcomes = "
            f"{numbers:,} probabilities ({8 * numbers / 1e9:.1f} GB); keep states (n_age_bands * n_genders * "
            "n_regions * satisfaction_levels * horizon) x slates (n_items! / (n_items - slate_size)!) x "
            f"outcomes (4 + 12 * slate_size) under {MAX_OUTCOME_NUMBERS:,}: lower env.n_items, env.slate_size, "
            "env.horizon or the user feature sizes."
        )
    return None


def n_outcomes(slate_size: int) -> int:
    """Outcomes of one step: (2 ignored + 6 per slot: clicked, or bought and rated 1..5) x (stay, leave)."""
    return 2 * (2 + 6 * slate_size)


def build_tabular_mdp(shop: Shop) -> TabularMDP:
    """Enumerate the exact MDP of ``shop`` (which must be enumerable: see ``conf/env/tiny.yaml``).

    Raises :class:`ConfigError` naming the field when it is not, or when the MDP would be too large.
    """
    problem = enumeration_problem(shop.cfg)
    if problem is not None:
        raise ConfigError(problem)
    cfg = shop.cfg
    f64 = torch.float64
    catalog = shop.catalog.to(torch.device("cpu"))
    users = shop.users.to(torch.device("cpu"))
    levels, horizon, k_slots = cfg.satisfaction_levels, cfg.horizon, cfg.slate_size
    slates = all_slates(cfg.n_items, k_slots)  # [A, K]
    n_actions = slates.shape[0]
    segments = users.segment_features()
    n_seg = segments.shape[0]
    preference, sensitivity = users.traits(segments, generator=None)

    # Response of every segment to every slate, slot by slot ([G, A, K]): the multinomial-logit choice
    # among the slate and no click, with the slots' position bias, exactly as Shop.step computes it.
    fit = (preference.to(f64) @ catalog.latent.to(f64).T)[:, slates]  # [G, A, K]
    utilities = response.click_utilities(
        fit, catalog.hype.to(f64)[slates], response.position_bias(k_slots, cfg, dtype=f64), cfg
    )
    click = response.click_probs(utilities, cfg)[..., 1:].unsqueeze(1)  # [G, 1, A, K]: P(click slot k)
    ignored = 1 - click.sum(-1)  # [G, 1, A]; written so, K = 1 gives the K = 1 MDP of before bit for bit
    sat = torch.arange(levels)
    # Purchase depends on satisfaction ([G, L, A, K]); the rating law does not ([G, 1, A, K, 5]).
    buy = response.purchase_prob(
        fit.unsqueeze(1),
        catalog.log_price_centered.to(f64)[slates],
        sensitivity.to(f64).view(-1, 1, 1, 1),
        sat.to(f64).view(1, -1, 1, 1),
        cfg,
    )
    rating_law = response.rating_probs(catalog.quality.to(f64)[slates].expand_as(fit), fit, cfg).unsqueeze(1)

    # The 2 + 6K response outcomes: ignored (penalised or not); per slot: clicked only, bought and rated 1..5.
    penalty = cfg.ignore_penalty_prob
    per_slot = torch.cat([(click * (1 - buy)).unsqueeze(-1), (click * buy).unsqueeze(-1) * rating_law], dim=-1)
    response_prob = torch.cat(
        [
            (ignored * penalty).expand(n_seg, levels, n_actions).unsqueeze(-1),
            (ignored * (1 - penalty)).expand(n_seg, levels, n_actions).unsqueeze(-1),
            per_slot.flatten(-2),
        ],
        dim=-1,
    )  # [G, L, A, 2 + 6K]
    rated = torch.tensor([0, 0] + [0, 1, 2, 3, 4, 5] * k_slots)
    clicked = torch.tensor([False, False] + [True] * 6 * k_slots)
    penalized = torch.tensor([True, False] + [False] * 6 * k_slots)
    slot = torch.tensor([0, 0] + [k for k in range(k_slots) for _ in range(6)])  # ignored: the first item, as logged
    price = catalog.price.to(f64)[slates][:, slot]  # [A, 2 + 6K]
    response_reward = response.reward(clicked, rated > 0, rated, price, cfg).to(f64)  # [A, 2 + 6K]

    # Satisfaction after each response outcome, then leave or stay.
    sat_next = response.next_satisfaction(sat.unsqueeze(-1), rated.unsqueeze(0), penalized.unsqueeze(0), cfg)
    leave = response.leave_prob(sat_next, cfg).to(f64)  # [L, 2 + 6K]

    n_states = n_seg * levels * horizon + 1
    terminal = n_states - 1
    n_response = response_prob.shape[-1]
    # Live states in index order are (segment, satisfaction, step): views of shape [G, L, T, ...].
    prob = torch.zeros(n_states, n_actions, 2, n_response, dtype=f64)
    live = prob[:terminal].view(n_seg, levels, horizon, n_actions, 2, n_response)
    live[..., 0, :] = (response_prob * (1 - leave).view(1, levels, 1, n_response)).unsqueeze(2)  # same at every step
    live[..., 1, :] = (response_prob * leave.view(1, levels, 1, n_response)).unsqueeze(2)

    # Next state of each (state, outcome): same segment, the new satisfaction, the next step; the terminal
    # after leaving or at the horizon. It does not depend on the slate.
    nxt = torch.full((n_states, 2, n_response), terminal, dtype=torch.long)
    g = torch.arange(n_seg).view(-1, 1, 1, 1)
    next_step = torch.arange(1, horizon + 1).view(1, 1, -1, 1)
    stay = (g * levels + sat_next.view(1, levels, 1, n_response)) * horizon + next_step  # [G, L, T, 2 + 6K]
    nxt[:terminal].view(n_seg, levels, horizon, 2, n_response)[..., 0, :] = torch.where(
        next_step < horizon, stay, terminal
    )

    n_out = 2 * n_response
    start = torch.zeros(n_states, dtype=f64)
    start_index = (torch.arange(n_seg) * levels + cfg.initial_satisfaction) * horizon
    start[start_index] = 1.0 / n_seg  # features, hence segments, are drawn uniformly
    return TabularMDP(
        outcome_prob=prob.view(n_states, n_actions, n_out),
        outcome_next=nxt.view(n_states, 1, n_out).expand(n_states, n_actions, n_out),
        outcome_reward=response_reward.repeat(1, 2).view(1, n_actions, n_out).expand(n_states, n_actions, n_out),
        start=start,
        n_segments=n_seg,
        satisfaction_levels=levels,
        horizon=horizon,
        slates=slates,
    )


# ----------------------------------------------------------------------------- solving and evaluating
def expected_next_value(mdp: TabularMDP, v: torch.Tensor) -> torch.Tensor:
    """[S, A] ``E[v(s') | s, a]``, from the outcomes (never the dense ``P``)."""
    if mdp.outcome_next.stride(1) == 0:  # built by build_tabular_mdp: the next state does not depend on the slate
        return torch.einsum("sao,so->sa", mdp.outcome_prob, v[mdp.outcome_next[:, 0]])
    return (mdp.outcome_prob * v[mdp.outcome_next]).sum(-1)


def value_iteration(
    mdp: TabularMDP, gamma: float = 1.0, tol: float = 1e-12, max_iter: int = 100_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal ``(Q* [S, A], V* [S])`` in float64 by value iteration (terminal value 0).

    With ``gamma = 1`` it converges because every session ends by the horizon (in
    ``horizon + 1`` sweeps: the step count is part of the state).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma = {gamma} must be in [0, 1].")
    R = mdp.R
    v = torch.zeros(mdp.n_states, dtype=torch.float64)
    for _ in range(max_iter):
        q = R + gamma * expected_next_value(mdp, v)
        q[mdp.terminal] = 0.0
        v_new = q.max(dim=1).values
        if (v_new - v).abs().max() <= tol:
            return q, v_new
        v = v_new
    raise RuntimeError(f"value iteration did not converge to {tol} in {max_iter} iterations.")


def policy_matrix(mdp: TabularMDP, policy: torch.Tensor) -> torch.Tensor:
    """[S, A] action probabilities from a deterministic policy [S] (actions) or a stochastic one [S, A]."""
    if policy.dim() == 1:
        if policy.shape != (mdp.n_states,):
            raise ValueError(f"policy has shape {tuple(policy.shape)}; expected [{mdp.n_states}] actions.")
        return torch.nn.functional.one_hot(policy.long(), mdp.n_actions).to(torch.float64)
    if policy.shape != (mdp.n_states, mdp.n_actions):
        raise ValueError(
            f"policy has shape {tuple(policy.shape)}; expected [{mdp.n_states}] actions "
            f"or [{mdp.n_states}, {mdp.n_actions}] probabilities."
        )
    return policy.to(torch.float64)


def policy_transitions(mdp: TabularMDP, policy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P_pi [S, S], r_pi [S])``: the state chain and the expected reward under ``policy``
    (deterministic [S] or stochastic [S, A]). The terminal's row is left at 0."""
    s = mdp.n_states
    if policy.dim() == 1 and policy.shape == (s,):  # deterministic: read the chosen action's outcomes
        states, actions = torch.arange(s), policy.long()
        prob, nxt = mdp.outcome_prob[states, actions], mdp.outcome_next[states, actions]  # [S, O]
        return _scatter_rows(prob, nxt), (prob * mdp.outcome_reward[states, actions]).sum(-1)
    pi = policy_matrix(mdp, policy)
    r_pi = (pi * mdp.R).sum(-1)
    if mdp.outcome_next.stride(1) == 0:  # next state independent of the slate: mix the outcome laws first
        weights, nxt = torch.einsum("sa,sao->so", pi, mdp.outcome_prob), mdp.outcome_next[:, 0]
    else:
        weights, nxt = (pi.unsqueeze(-1) * mdp.outcome_prob).reshape(s, -1), mdp.outcome_next.reshape(s, -1)
    return _scatter_rows(weights, nxt), r_pi


def _scatter_rows(weights: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    """[S, S] with ``weights[s, j]`` added at column ``nxt[s, j]``; the terminal's row left at 0."""
    s = weights.shape[0]
    p_pi = torch.zeros(s, s, dtype=torch.float64).scatter_add_(1, nxt, weights)
    p_pi[s - 1] = 0.0
    return p_pi


def evaluate_policy(mdp: TabularMDP, policy: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """[S] exact value of ``policy`` (deterministic [S] or stochastic [S, A]) by solving the Bellman equation."""
    p_pi, r_pi = policy_transitions(mdp, policy)
    live = torch.arange(mdp.n_states) != mdp.terminal
    a = torch.eye(int(live.sum()), dtype=torch.float64) - gamma * p_pi[live][:, live]
    v = torch.zeros(mdp.n_states, dtype=torch.float64)
    v[live] = torch.linalg.solve(a, r_pi[live])
    return v


def greedy(q: torch.Tensor) -> torch.Tensor:
    """[S] argmax action of a Q table (ties go to the lowest action index: the first slate in all_slates order)."""
    return q.argmax(dim=1)


def myopic_policy(mdp: TabularMDP) -> torch.Tensor:
    """[S] the policy that maximises the expected immediate reward (the best slate, not the top-K items)."""
    return greedy(mdp.R)


def occupancy(mdp: TabularMDP, policy: torch.Tensor) -> torch.Tensor:
    """[S] expected number of visits to each state in one session under ``policy``."""
    p_pi, _ = policy_transitions(mdp, policy)
    live = torch.arange(mdp.n_states) != mdp.terminal
    a = torch.eye(int(live.sum()), dtype=torch.float64) - p_pi[live][:, live].T
    visits = torch.zeros(mdp.n_states, dtype=torch.float64)
    visits[live] = torch.linalg.solve(a, mdp.start[live])
    return visits


def start_value(mdp: TabularMDP, v: torch.Tensor) -> float:
    """Expected session return from the start distribution."""
    return float(mdp.start @ v)


# ----------------------------------------------------------------------------- agents against the oracle
def agent_policy(shop: Shop, agent: Any) -> torch.Tensor:
    """[S] the action index of the slate ``agent`` shows in each state of ``shop``'s exact MDP.

    ``agent`` is anything with the agents' ``act(obs, explore=False) -> [B, K]`` (or a function
    ``obs -> slate``); it is asked once, for :func:`state_observations` (empty history). The
    terminal's action is moot (0).
    """
    act = agent.act if hasattr(agent, "act") else agent
    obs = state_observations(shop)
    slates = torch.as_tensor(act(obs)).cpu().long().reshape(obs["step"].shape[0], shop.cfg.slate_size)
    actions = slate_index(slates, shop.cfg.n_items)
    return torch.cat([actions, torch.zeros(1, dtype=torch.long)])


def greedy_policy_value(
    shop: Shop, agent: Any, gamma: float = 1.0, mdp: TabularMDP | None = None
) -> tuple[float, float]:
    """``(value, v_star)``: the exact expected session return of ``agent``'s greedy policy in ``shop``
    (any slate size; see :func:`agent_policy`) and the optimal one, from the start distribution.

    ``mdp`` saves rebuilding ``shop``'s MDP when the caller has it.
    """
    mdp = build_tabular_mdp(shop) if mdp is None else mdp
    _, v_star = value_iteration(mdp, gamma=gamma)
    value = evaluate_policy(mdp, agent_policy(shop, agent), gamma=gamma)
    return start_value(mdp, value), start_value(mdp, v_star)
