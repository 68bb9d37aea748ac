"""A click model fitted to logged impressions, and the baselines it must beat.

``P(click | user, item, position)`` = sigmoid(bias + position effect + item effect +
affinity effect + <user embedding, item embedding>), where the user embedding sums
embeddings of the four hashed user features and the item embedding sums those of the item
id and its three categorical features. Fitted by full-batch Adam with weight decay (clicks
are rare, so the model must be small and regularised). :func:`fit_and_compare` reports
held-out log-loss and AUC against a constant rate and a smoothed per-item rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rlrec.data.obd import N_POSITIONS, LoggedData


class ClickModel(nn.Module):
    """Logistic click model over user features x item features x position."""

    def __init__(self, user_cardinalities: list[int], n_items: int, item_cardinalities: list[int], dim: int = 4) -> None:
        super().__init__()
        self.users = nn.ModuleList(nn.Embedding(c, dim) for c in user_cardinalities)
        self.item = nn.Embedding(n_items, dim)
        self.item_cats = nn.ModuleList(nn.Embedding(c, dim) for c in item_cardinalities)
        self.item_bias = nn.Embedding(n_items, 1)
        self.position = nn.Embedding(N_POSITIONS, 1)
        self.affinity_weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1))
        for emb in [*self.users, self.item, *self.item_cats]:
            nn.init.normal_(emb.weight, std=0.01)
        nn.init.zeros_(self.item_bias.weight)
        nn.init.zeros_(self.position.weight)

    def logits(self, user_features: torch.Tensor, items: torch.Tensor, position: torch.Tensor,
               affinity: torch.Tensor, item_categories: torch.Tensor) -> torch.Tensor:
        """Logits for rows ``(user_features [n, 4], items [n], position [n], affinity [n])``."""
        user = sum(emb(user_features[:, i]) for i, emb in enumerate(self.users))
        cats = item_categories[items]
        item = self.item(items) + sum(emb(cats[:, i]) for i, emb in enumerate(self.item_cats))
        return (self.bias + self.position(position).squeeze(-1) + self.item_bias(items).squeeze(-1)
                + self.affinity_weight * torch.log1p(affinity) + (user * item).sum(-1))


def _shown_affinity(data: LoggedData) -> torch.Tensor:
    if data.affinity is None:
        return torch.zeros(len(data))
    return data.affinity.float().gather(1, data.action.view(-1, 1)).squeeze(1)


def log_loss(p: torch.Tensor, y: torch.Tensor) -> float:
    p = p.double().clamp(1e-7, 1 - 1e-7)
    y = y.double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def auc(score: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the ROC curve (ties count one half), by ranks."""
    y = y.bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = score.double().argsort()
    ranks = torch.empty_like(order, dtype=torch.float64)
    sorted_scores = score.double()[order]
    # average ranks over ties
    unique, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_click_model(data: LoggedData, rows: torch.Tensor, epochs: int = 200, lr: float = 0.05,
                    weight_decay: float = 1e-2, seed: int = 0) -> ClickModel:
    """Fit a :class:`ClickModel` on ``data``'s ``rows`` (indices)."""
    torch.manual_seed(seed)
    cards = [int(data.user_features[:, i].max()) + 1 for i in range(data.user_features.shape[1])]
    item_cards = [int(data.item_categories[:, i].max()) + 1 for i in range(data.item_categories.shape[1])]
    model = ClickModel(cards, data.n_items, item_cards)
    target = data.click[rows]
    rate = float(target.mean().clamp(1e-4, 1 - 1e-4))
    with torch.no_grad():
        model.bias.fill_(math.log(rate / (1 - rate)))  # start at the base rate
    # Shrink the effects toward zero, never the base rate: decaying the bias would pull
    # every prediction toward 1/2.
    decayed = [p for name, p in model.named_parameters() if name != "bias"]
    opt = torch.optim.Adam([{"params": decayed, "weight_decay": weight_decay},
                            {"params": [model.bias], "weight_decay": 0.0}], lr=lr)
    inputs = (data.user_features[rows], data.action[rows], data.position[rows], _shown_affinity(data)[rows],
              data.item_categories)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(model.logits(*inputs), target)
        loss.backward()
        opt.step()
    return model


def fit_and_compare(data: LoggedData, test_fraction: float = 0.3, seed: int = 0,
                    prior_strength: float = 200.0) -> dict[str, dict[str, float]]:
    """Held-out log-loss and AUC of the click model, a constant rate and a smoothed per-item rate.

    The per-item rate shrinks each item's click rate toward the global one with
    ``prior_strength`` pseudo-impressions (without it, items with no training click get 0).
    """
    n = len(data)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(n * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    y_test = data.click[test]
    rate = float(data.click[train].mean())
    clicks = torch.zeros(data.n_items, dtype=torch.float64).index_add_(0, data.action[train], data.click[train].double())
    shows = torch.zeros(data.n_items, dtype=torch.float64).index_add_(0, data.action[train],
                                                                      torch.ones(len(train), dtype=torch.float64))
    per_item = (clicks + prior_strength * rate) / (shows + prior_strength)
    model = fit_click_model(data, train, seed=seed)
    with torch.no_grad():
        p_model = torch.sigmoid(model.logits(data.user_features[test], data.action[test], data.position[test],
                                             _shown_affinity(data)[test], data.item_categories))
    predictions = {"constant": torch.full((n_test,), rate), "per_item": per_item[data.action[test]],
                   "click_model": p_model}
    return {name: {"log_loss": log_loss(p, y_test), "auc": auc(p, y_test), "test_rows": n_test,
                   "test_clicks": int(y_test.sum())} for name, p in predictions.items()}
