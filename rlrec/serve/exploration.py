"""Exploration around a model's scores, and the exact probability of every item at every position.

A service shows a customer the slate ``a_0 .. a_{k-1}`` and logs, for each position j, the
propensity ``P(a_j at position j | request)``: the probability that its policy (the model's
scores plus the exploration below) puts that item at that position. Off-policy estimates
(:mod:`rlrec.eval.ope`) divide by it, so it is computed from the policy's definition, never
estimated. Over the request's candidates C (the whole catalog unless the request names a
subset), n = |C|, with scores s:

- ``greedy``: the k best-scored candidates in score order; each shown with probability 1.
- ``epsilon_greedy``: with probability eps a uniformly random slate of k distinct candidates
  in random order, else the greedy slate. Every position of a uniform slate is uniform over
  C, so ``P(i at j) = (1 - eps) [i = g_j] + eps / n``.
- ``softmax``: with probability eps a uniform slate, else a Plackett-Luce draw from the pool
  of the m = max(pool, k) best-scored candidates: position 0 drawn with probability proportional to
  ``w_i = exp(s_i / temperature)``, position 1 likewise among the rest, and so on.
  ``P(i at j) = (1 - eps) PL_j(i) + eps / n``, with ``PL_j(i) = 0`` outside the pool.

The Plackett-Luce position marginals. ``PL_0(i) = p_i = w_i / W`` and ``PL_1(i) = p_i sum_{l != i}
p_l / (1 - p_l)`` have closed forms. From position 2 on, the sum over every ordering of the
items ahead of i has none, so :func:`plackett_luce_marginals` uses the Gumbel-max view of
Plackett-Luce (a draw is the order of ``log w_l + G_l`` for independent Gumbel ``G_l``).
Conditioning on i's noise through ``t = exp(-G_i) ~ Exponential(1)``, each other item l is
ahead of i independently with probability ``q_l(t) = 1 - exp(-t w_l / w_i)``, so

    PL_j(i) = E_t[ P(exactly j of the other items are ahead of i | t) ].

The inner probability is a Poisson-binomial term: the coefficient of z^j in
``prod_l (1 - q_l + q_l z)``, multiplied out exactly (truncated at degree j; every term is
non-negative, so nothing cancels). The outer expectation is an integral over t, done by the
trapezoid rule in log t; the integrand is analytic and decays double-exponentially at both
ends, where the rule converges geometrically: 1e-12 or better (tests/test_serve.py checks it
against the enumeration of every ordering, and the sampler against its own frequencies).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import torch

from rlrec.config import ExplorationConfig

MAX_K = 100  # items one request may ask for
MAX_SOFTMAX_K = 20  # with softmax exploration (the marginals' cost grows like k^3)
QUADRATURE_STEP = 0.3  # trapezoid step in log t: the error falls like exp(-pi^2 / step), 1e-14 here
QUADRATURE_TOLERANCE = 1e-15  # what the cut ends of the integral may hold, at most


@dataclass
class Decision:
    """One request's slate and the probability of each of its items at its position."""

    items: list[int]
    propensities: list[float]
    explored: bool  # the slate came from the uniform branch (for metrics; the propensities cover both)


def request_seed(seed: int, request_id: str) -> int:
    """The exploration seed of one request: a hash of the service's seed and the request id, so a
    decision can be replayed exactly, whatever else the service was doing at the time."""
    digest = hashlib.blake2b(f"{seed}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@torch.no_grad()
def decide(
    scores: torch.Tensor,
    ks: list[int],
    candidates: list[list[int] | None],
    settings: ExplorationConfig,
    seeds: list[int],
) -> list[Decision]:
    """Slates and propensities for a batch of requests.

    The best candidates of every request come from one ``topk`` over the batch's [B, N]
    scores (exact, over the whole catalog); each request then draws from its own seeded
    generator (Python's, cheap for a handful of numbers), and the Plackett-Luce marginals of
    the whole batch are one vectorised call.

    Args:
        scores: [B, N] the model's scores of every item for each request.
        ks: items to show per request (each at most its number of candidates).
        candidates: per request, the item ids it may show (distinct), or None for all.
        settings: the exploration (``kind`` greedy, epsilon_greedy or softmax).
        seeds: per request, the seed of its random draws (:func:`request_seed`).
    """
    kind, eps = settings.kind, (0.0 if settings.kind == "greedy" else settings.epsilon)
    n_items = scores.shape[1]
    n_cand = [n_items if c is None else len(c) for c in candidates]
    # the softmax pool holds at least k candidates, so that a Plackett-Luce draw can fill the slate
    pools = [min(max(settings.pool, k), n) if kind == "softmax" else k for k, n in zip(ks, n_cand)]
    top_scores, top_items = masked_scores(scores.float(), candidates).topk(max(pools), dim=1)  # best first
    logits = top_scores.double() / settings.temperature
    best = top_items.tolist()
    slates, in_pool, explored = [], [], []
    for b, (k, n, m, seed) in enumerate(zip(ks, n_cand, pools, seeds)):
        pool_logits = logits[b, :m].tolist() if kind == "softmax" else None
        slate, index, uniform = draw(best[b][:m], pool_logits, k, n, candidates[b], eps, random.Random(seed))
        slates.append(slate)
        in_pool.append(index)
        explored.append(uniform)

    # P(item at position) = (1 - eps) * P(the model's branch puts it there) + eps / n
    if kind == "softmax":
        rows = [(b, j, i) for b, index in enumerate(in_pool) for j, i in enumerate(index) if i >= 0]
        model = {}
        if rows:
            b, j, i = (torch.tensor(c) for c in zip(*rows))
            beyond = torch.arange(logits.shape[1]).unsqueeze(0) >= torch.tensor(pools).unsqueeze(1)
            pool_logits = logits.masked_fill(beyond, -math.inf)[b]  # each request's own pool
            model = dict(zip(zip(b.tolist(), j.tolist()), plackett_luce_marginals(pool_logits, i, j).tolist()))
        model_prob = lambda b, j, i: model.get((b, j), 0.0)
    else:  # greedy: position j shows the j-th best
        model_prob = lambda b, j, i: 1.0 if i == j else 0.0
    return [
        Decision(slate, [(1.0 - eps) * model_prob(b, j, i) + eps / n for j, i in enumerate(index)], was_explored)
        for b, (slate, index, n, was_explored) in enumerate(zip(slates, in_pool, n_cand, explored))
    ]


def draw(
    pool: list[int],
    logits: list[float] | None,
    k: int,
    n: int,
    candidates: list[int] | None,
    eps: float,
    rng: random.Random,
) -> tuple[list[int], list[int], bool]:
    """The sampler: one slate of ``k`` items, with each item's index in ``pool`` (-1: outside it).

    ``pool``: the best-scored candidates, best first; ``logits``: their Plackett-Luce logits
    (None: the greedy slate); with probability ``eps`` the slate is instead ``k`` of the ``n``
    candidates drawn uniformly without replacement, in random order. Returns (items, indices,
    whether the uniform branch was taken).
    """
    if eps > 0 and rng.random() < eps:
        slate = rng.sample(range(n) if candidates is None else candidates, k)
        where = {item: i for i, item in enumerate(pool)}
        return slate, [where.get(item, -1) for item in slate], True
    if logits is None:
        return pool[:k], list(range(k)), False
    # Plackett-Luce without replacement = the k largest of logit + Gumbel noise
    noisy = [x - math.log(-math.log(max(rng.random(), 1e-300))) for x in logits]
    index = sorted(range(len(logits)), key=noisy.__getitem__, reverse=True)[:k]
    return [pool[i] for i in index], index, False


def position_marginals(
    scores: torch.Tensor, k: int, settings: ExplorationConfig, candidates: list[int] | None = None
) -> torch.Tensor:
    """[k, N] float64: P(item i at position j) under the serving policy for one request with
    ``scores`` [N]: the whole table of which :func:`decide` logs the shown entries. Each row
    sums to 1. (For checks, and for evaluating an exploring policy on logs.)"""
    n_items = scores.numel()
    kind, eps = settings.kind, (0.0 if settings.kind == "greedy" else settings.epsilon)
    n = n_items if candidates is None else len(candidates)
    m = min(max(settings.pool, k), n) if kind == "softmax" else k
    top_scores, top_items = masked_scores(scores.float().view(1, -1), [candidates]).topk(m, dim=1)
    table = torch.zeros(k, n_items, dtype=torch.float64)
    allowed = torch.zeros(n_items, dtype=torch.bool)
    allowed[torch.arange(n_items) if candidates is None else torch.tensor(candidates)] = True
    table[:, allowed] = eps / n
    if kind == "softmax":
        logits = (top_scores.double() / settings.temperature).expand(m * k, -1)
        index = torch.arange(m).repeat(k)
        position = torch.arange(k).repeat_interleave(m)
        model = plackett_luce_marginals(logits, index, position).view(k, m)
    else:
        model = torch.eye(k, m, dtype=torch.float64)
    table[:, top_items[0]] += (1.0 - eps) * model
    return table


def masked_scores(scores: torch.Tensor, candidates: list[list[int] | None]) -> torch.Tensor:
    """``scores`` [B, N] with every item outside a row's candidates at -inf (it is never shown)."""
    if all(c is None for c in candidates):
        return scores
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for b, c in enumerate(candidates):
        if c is None:
            mask[b] = True
        else:
            mask[b, c] = True
    return scores.masked_fill(~mask, -math.inf)


def plackett_luce_sample(logits: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """[k] indices of ``logits`` [m] drawn by Plackett-Luce without replacement (Gumbel top-k)."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    return (logits - torch.log(-torch.log(u))).topk(k).indices


def plackett_luce_marginals(logits: torch.Tensor, item: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """[R] the probability that a Plackett-Luce draw over ``logits[r]`` puts ``item[r]`` at ``position[r]``.

    ``logits`` [R, m] float64 (-inf: not in the pool); ``item`` [R], ``position`` [R] long.
    Closed forms for positions 0 and 1, the integral of the module docstring beyond.
    """
    logits = logits.double()
    rows = torch.arange(logits.shape[0])
    log_total = torch.logsumexp(logits, 1, keepdim=True)
    log_p = logits - log_total  # log p_l, in logs so that no weight underflows
    out = torch.zeros(logits.shape[0], dtype=torch.float64)
    first = position == 0
    out[first] = log_p[rows, item][first].exp()
    second = position == 1
    if bool(second.any()):
        # PL_1(i) = sum_{l != i} p_l w_i / (W - w_l). log(W - w_l) = log W + log(1 - p_l), accurate
        # for p_l <= 1/2; the heaviest item's is the log-sum of the others' weights
        log_rest = log_total + torch.log1p(-log_p.exp())
        top = logits.argmax(1, keepdim=True)
        log_rest.scatter_(1, top, torch.logsumexp(logits.scatter(1, top, -math.inf), 1, keepdim=True))
        terms = log_p + logits[rows, item].unsqueeze(1) - log_rest
        terms[rows, item] = -math.inf  # l != i
        out[second] = torch.logsumexp(terms, 1).exp()[second]
    later = position >= 2
    if bool(later.any()):
        out[later] = _marginals_by_quadrature(logits[later], item[later], position[later])
    return out


def _marginals_by_quadrature(logits: torch.Tensor, item: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(logits.shape[0])
    log_ratio = logits - logits[rows, item].unsqueeze(1)  # log(w_l / w_i); -inf outside the pool
    log_ratio[rows, item] = -math.inf  # i is not ahead of itself
    # The integrand is at most 1, and at most (t * sum_l w_l / w_i)^2 / 2 (two items must be
    # ahead), so [0, t_low] holds at most min(t_low, ratio_sum^2 t_low^3 / 6); beyond t = 40,
    # exp(-t) leaves less than 1e-16.
    log_ratio_sum = float(torch.logsumexp(log_ratio, 1).max())
    log_t_low = max(math.log(QUADRATURE_TOLERANCE), (math.log(6 * QUADRATURE_TOLERANCE) - 2 * log_ratio_sum) / 3)
    y = torch.arange(log_t_low, math.log(40.0) + QUADRATURE_STEP, QUADRATURE_STEP, dtype=torch.float64)
    t = y.exp()  # [Q]
    rate = log_ratio.exp().unsqueeze(1) * t.view(1, -1, 1)  # [R, Q, m]: t * w_l / w_i
    coefficients = _poisson_binomial(-torch.expm1(-rate), int(position.max()) + 1)  # [D, R, Q]
    exactly = coefficients[position, rows]  # [R, Q]
    return (exactly * torch.exp(-t) * t).sum(1) * QUADRATURE_STEP


def _poisson_binomial(q: torch.Tensor, degree: int) -> torch.Tensor:
    """[degree, ...] P(exactly d of independent events with probabilities ``q`` [..., m] happen), d < degree.

    The polynomials ``(1 - q_l) + q_l z`` are multiplied pairwise in a tree (log2 m rounds of
    batched products, truncated at ``degree``), all terms non-negative.
    """
    poly = torch.zeros(degree, *q.shape, dtype=q.dtype)  # coefficient first: contiguous slices
    poly[0] = 1.0 - q
    if degree > 1:
        poly[1] = q
    while poly.shape[-1] > 1:
        if poly.shape[-1] % 2:  # an odd one out is paired with the polynomial 1
            one = torch.zeros(*poly.shape[:-1], 1, dtype=q.dtype)
            one[0] = 1.0
            poly = torch.cat([poly, one], -1)
        a, b = poly[..., 0::2].contiguous(), poly[..., 1::2].contiguous()
        poly = a * b[0]  # coefficient d of the product: sum over e + f = d of a_e * b_f
        for f in range(1, degree):
            poly[f:] += a[: degree - f] * b[f]
    return poly[..., 0]


def greedy_probs(scores: torch.Tensor, position: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """[n, N] float64: the greedy policy of ``scores`` [n, N] puts all its mass, at row r's
    ``position[r]``, on its ``position[r]``-th best candidate (``candidates``: [n, N] bool mask)."""
    scores = scores.double()
    if candidates is not None:
        scores = scores.masked_fill(~candidates, -math.inf)
    best = scores.topk(int(position.max()) + 1, dim=1).indices.gather(1, position.view(-1, 1)).squeeze(1)
    return torch.nn.functional.one_hot(best, scores.shape[1]).double()
