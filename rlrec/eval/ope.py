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
replacement, ``n_boot`` times, from a seeded generator; or whole groups of rows, such as
the positions of one served slate, with ``groups``).
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


class _GroupBootstrap:
    """Resamples whole groups of rows (e.g. the positions of one slate, which share a context and
    compete for one click), ``chunk`` replicates at a time so that memory stays O(chunk x groups)."""

    def __init__(self, groups: torch.Tensor, n_boot: int, seed: int, chunk: int = 64) -> None:
        self.index, self.inverse = torch.unique(groups, return_inverse=True)
        self.n_boot, self.seed, self.chunk = n_boot, seed, chunk
        self.count = self.sums(torch.ones(groups.numel(), dtype=torch.float64))

    def sums(self, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.index.numel(), dtype=torch.float64).index_add_(0, self.inverse, values.double())

    def ratios(self, num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        """[n_boot] sum(num) / sum(den) over each resample of the groups (row sums per group first)."""
        num, den = self.sums(num), self.sums(den)
        generator, out = torch.Generator().manual_seed(self.seed), []
        for start in range(0, self.n_boot, self.chunk):
            idx = torch.randint(num.numel(), (min(self.chunk, self.n_boot - start), num.numel()), generator=generator)
            out.append(num[idx].sum(1) / den[idx].sum(1).clamp_min(1e-300))
        return torch.cat(out)


def bootstrap_mean(
    values: torch.Tensor, name: str = "mean", n_boot: int = 500, seed: int = 0, groups: torch.Tensor | None = None
) -> Estimate:
    """The mean of ``values`` [n] with its bootstrap 95% interval (e.g. an on-policy click rate).

    ``groups`` [n]: resample whole groups of rows (rows of one group are not independent).
    """
    values = values.double()
    if groups is not None:
        samples = _GroupBootstrap(groups, n_boot, seed).ratios(values, torch.ones_like(values))
        return Estimate(name, float(values.mean()), *_interval(samples))
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
    pi_logged = eval_probs.double().gather(1, action.view(-1, 1)).squeeze(1)
    dm = q_logged = None
    if reward_model is not None:
        q = reward_model.double()
        dm = (eval_probs.double() * q).sum(1)
        q_logged = q.gather(1, action.view(-1, 1)).squeeze(1)
    return estimates_from_rows(click, pi_logged, propensity, dm, q_logged, n_boot=n_boot, seed=seed)


def estimates_from_rows(
    click: torch.Tensor,
    pi_logged: torch.Tensor,
    propensity: torch.Tensor,
    dm: torch.Tensor | None = None,
    q_logged: torch.Tensor | None = None,
    n_boot: int = 500,
    seed: int = 0,
    groups: torch.Tensor | None = None,
) -> dict[str, Estimate]:
    """The estimators of :func:`off_policy_estimates` from per-row quantities, for logs whose
    catalog is too large for [n, N] matrices.

    Args:
        click: [n] rewards. pi_logged: [n] the evaluated policy's probability of each logged
        item in its context. propensity: [n] the logging policy's. dm: [n] the reward model's
        expected reward of the evaluated policy, ``sum_a pi(a | x) q(x, a)``; q_logged: [n]
        its prediction for the logged item (both or neither). groups: [n] resample whole
        groups in the bootstrap (default: rows).
    """
    if bool(((propensity <= 0) | (propensity > 1)).any()):
        raise ValueError("propensity must lie in (0, 1] on every row.")
    click = click.double()
    weight = pi_logged.double() / propensity.double()
    num, den = weight * click, weight
    terms = {"ips": num}
    if dm is not None:
        terms["dm"] = dm.double()
        terms["dr"] = dm.double() + weight * (click - q_logged.double())
    out = {}
    if groups is not None:
        boot = _GroupBootstrap(groups, n_boot, seed)  # the same resamples for every estimator
        ones = torch.ones_like(click)
        for name, contrib in terms.items():
            out[name] = Estimate(name, float(contrib.mean()), *_interval(boot.ratios(contrib, ones)))
        out["snips"] = Estimate("snips", float(num.sum() / den.sum()), *_interval(boot.ratios(num, den)))
        return {name: out[name] for name in ("ips", "snips", "dm", "dr") if name in out}
    idx = _bootstrap_indices(click.numel(), n_boot, seed)

    def mean_of(contrib: torch.Tensor, name: str) -> Estimate:  # same resamples for every estimator
        return Estimate(name, float(contrib.mean()), *_interval(contrib[idx].mean(1)))

    out["ips"] = mean_of(terms["ips"], "ips")
    snips = float(num.sum() / den.sum())
    out["snips"] = Estimate("snips", snips, *_interval(num[idx].sum(1) / den[idx].sum(1).clamp_min(1e-300)))
    if dm is not None:
        out["dm"] = mean_of(terms["dm"], "dm")
        out["dr"] = mean_of(terms["dr"], "dr")
    return out


def uniform_probs(n: int, n_items: int) -> torch.Tensor:
    """[n, N] the uniformly random policy."""
    return torch.full((n, n_items), 1.0 / n_items, dtype=torch.float64)
