"""Off-policy evaluation: a policy's expected click rate from logs of another policy.

Each logged row i has a context x_i (user features, position), the shown item a_i, its
click r_i and the logging propensity p_i = P_log(a_i | x_i). The evaluated policy gives
pi_i = pi(. | x_i), a distribution over items for that row's context and *position*
(position-aware: the value is the expected click rate at the logged positions).

- IPS: mean_i w_i r_i with w_i = pi_i(a_i) / p_i. Unbiased when p_i > 0 wherever pi > 0.
- SNIPS: sum_i w_i r_i / sum_i w_i. Slightly biased, much less variance.
- DM (direct method): mean_i sum_a pi_i(a) q(x_i, a), for a reward model q.
- DR (doubly robust): DM + mean_i w_i (r_i - q(x_i, a_i)). Unbiased if either the
  propensities or the reward model is right.

Every estimate comes with a bootstrap 95% percentile interval (rows resampled with
replacement, ``n_boot`` times, from a seeded generator).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

ESTIMATORS = ("ips", "snips", "dm", "dr")


@dataclass
class Estimate:
    estimator: str
    value: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict:
        return asdict(self)


def _interval(samples: torch.Tensor) -> tuple[float, float]:
    low, high = torch.quantile(samples.double(), torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(low), float(high)


def _bootstrap_indices(n: int, n_boot: int, seed: int) -> torch.Tensor:
    return torch.randint(n, (n_boot, n), generator=torch.Generator().manual_seed(seed))


def bootstrap_mean(values: torch.Tensor, name: str = "mean", n_boot: int = 500, seed: int = 0) -> Estimate:
    """The mean of ``values`` [n] with its bootstrap 95% interval (e.g. an on-policy click rate)."""
    values = values.double()
    idx = _bootstrap_indices(values.numel(), n_boot, seed)
    return Estimate(name, float(values.mean()), *_interval(values[idx].mean(1)))


def off_policy_estimates(
    click: torch.Tensor,
    action: torch.Tensor,
    propensity: torch.Tensor,
    eval_probs: torch.Tensor,
    reward_model: torch.Tensor | None = None,
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, Estimate]:
    """IPS, SNIPS and, with a ``reward_model``, DM and DR estimates with bootstrap 95% CIs.

    Args:
        click: [n] logged rewards (0/1). action: [n] logged items. propensity: [n] in (0, 1].
        eval_probs: [n, N] the evaluated policy's item probabilities for each row's context.
        reward_model: [n, N] predicted click probability of every item in each row's context.
        n_boot: bootstrap resamples. seed: seeds them.
    """
    if bool(((propensity <= 0) | (propensity > 1)).any()):
        raise ValueError("propensity must lie in (0, 1] on every row.")
    click = click.double()
    pi_logged = eval_probs.double().gather(1, action.view(-1, 1)).squeeze(1)
    weight = pi_logged / propensity.double()
    idx = _bootstrap_indices(click.numel(), n_boot, seed)

    def mean_of(contrib: torch.Tensor, name: str) -> Estimate:  # same resamples for every estimator
        return Estimate(name, float(contrib.mean()), *_interval(contrib[idx].mean(1)))

    out = {"ips": mean_of(weight * click, "ips")}
    num, den = weight * click, weight
    snips = float(num.sum() / den.sum())
    out["snips"] = Estimate("snips", snips, *_interval(num[idx].sum(1) / den[idx].sum(1).clamp_min(1e-300)))
    if reward_model is not None:
        q = reward_model.double()
        dm = (eval_probs.double() * q).sum(1)
        out["dm"] = mean_of(dm, "dm")
        q_logged = q.gather(1, action.view(-1, 1)).squeeze(1)
        out["dr"] = mean_of(dm + weight * (click - q_logged), "dr")
    return out


def uniform_probs(n: int, n_items: int) -> torch.Tensor:
    """[n, N] the uniformly random policy."""
    return torch.full((n, n_items), 1.0 / n_items, dtype=torch.float64)
