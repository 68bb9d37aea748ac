"""Neural pieces of the agents: user tower, history encoder, state encoder, item tower and heads.

The network scores every item at once. A state vector comes from the user tower (user
features, step, satisfaction when observed) and the history encoder; item vectors come
from the item tower (id, category, brand, price). The ``dot`` head is
``Q[b, i] = state[b] . item[i] + bias[i]``: one matrix product for all N items.
The ``tabular`` head is a one-hot linear layer over the enumerable shop's states, the
form in which DQN reduces exactly to tabular Q-learning (see tests/test_agents.py).
:class:`StateEncoder` and :class:`ItemScorer` are the same pieces as the slate and
policy-gradient agents use them (SlateQ's heads, the policies' logits).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rlrec.agents.base import AgentSpec
from rlrec.sim import response
from rlrec.sim.env import Observation
from rlrec.sim.tabular import n_tabular_states, tabular_state_index


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class UserTower(nn.Module):
    """Embeds the user's categorical features, the step count and (if observed) satisfaction."""

    def __init__(self, spec: AgentSpec, dim: int) -> None:
        super().__init__()
        ages, genders, regions = spec.user_feature_sizes
        self.age = nn.Embedding(ages, dim)
        self.gender = nn.Embedding(genders, dim)
        self.region = nn.Embedding(regions, dim)
        self.step = nn.Embedding(spec.horizon + 1, dim)  # + 1: the step count of a finished session
        self.satisfaction = nn.Embedding(spec.satisfaction_levels, dim) if spec.observe_satisfaction else None

    def forward(self, obs: Observation) -> torch.Tensor:
        f = obs["user_features"]
        out = torch.cat([self.age(f[:, 0]), self.gender(f[:, 1]), self.region(f[:, 2]), self.step(obs["step"])], -1)
        if self.satisfaction is not None:
            out = torch.cat([out, self.satisfaction(obs["satisfaction"])], -1)
        return out

    @staticmethod
    def out_dim(spec: AgentSpec, dim: int) -> int:
        return dim * (5 if spec.observe_satisfaction else 4)


class HistoryEncoder(nn.Module):
    """Embeds recent (item, response) pairs: a masked mean, a GRU, or ``"flat"``.

    Each step's vector is the item embedding modulated by the response code's. ``"mean"``
    pools them (order and counts are lost), ``"gru"`` reads them in order, and ``"flat"``
    keeps every position apart (each step's item x code vector and its code's own embedding,
    concatenated in order), so the latest response (a bad rating, an ignored slate) stays
    readable instead of being averaged away. ``out_dim`` is the output width.
    """

    def __init__(self, spec: AgentSpec, dim: int, kind: str = "mean") -> None:
        super().__init__()
        self.kind = kind
        self.item = nn.Embedding(spec.n_items + 1, dim, padding_idx=spec.n_items)
        self.code = nn.Embedding(response.N_RESPONSE_CODES, dim, padding_idx=response.PAD)
        self.gru = nn.GRU(dim, dim, batch_first=True) if kind == "gru" else None
        self.code_alone = nn.Embedding(response.N_RESPONSE_CODES, dim) if kind == "flat" else None
        self.out_dim = 2 * dim * spec.history_len if kind == "flat" else dim

    def forward(self, obs: Observation) -> torch.Tensor:
        steps = self.item(obs["history_items"]) * self.code(obs["history_codes"])  # the response modulates the item
        if self.code_alone is not None:
            return torch.cat([steps, self.code_alone(obs["history_codes"])], -1).flatten(1)
        if self.gru is not None:
            return self.gru(steps)[1].squeeze(0)
        present = (obs["history_codes"] != response.PAD).unsqueeze(-1).float()
        return (steps * present).sum(1) / present.sum(1).clamp_min(1.0)


class StateEncoder(nn.Module):
    """``forward(obs) -> [B, hidden_dim]``: user tower and history encoder, then an MLP (ReLU after).

    Args:
        spec: what the shop shows agents.
        embed_dim, hidden_dim: embedding width and output width.
        history: ``"flat"``, ``"mean"``, ``"gru"`` (:class:`HistoryEncoder`) or ``"none"``.
        extra_inputs: width of an extra input vector concatenated before the MLP (an asymmetric
            critic's privileged features, say); ``forward(obs, extra)`` then takes it.
    """

    def __init__(
        self, spec: AgentSpec, embed_dim: int, hidden_dim: int, history: str = "flat", extra_inputs: int = 0
    ) -> None:
        super().__init__()
        self.user = UserTower(spec, embed_dim)
        self.history = HistoryEncoder(spec, embed_dim, history) if history != "none" else None
        width = UserTower.out_dim(spec, embed_dim) + (self.history.out_dim if self.history is not None else 0)
        self.net = mlp([width + extra_inputs, hidden_dim, hidden_dim])
        self.out_dim = hidden_dim

    def forward(self, obs: Observation, extra: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.user(obs)] + ([self.history(obs)] if self.history is not None else [])
        if extra is not None:
            parts.append(extra)
        return torch.relu(self.net(torch.cat(parts, -1)))


class ItemScorer(nn.Module):
    """``score[b, i] = proj(state[b]) . item[i] + bias[i]``: one matrix product for all N items.

    ``forward(state, items)`` scores every item ([B, N]); with ``ids`` [B, M] it scores each
    row's own M items ([B, M]), e.g. the items of the slate that row was shown.
    """

    def __init__(self, state_dim: int, item_dim: int, n_items: int) -> None:
        super().__init__()
        self.proj = nn.Linear(state_dim, item_dim)
        self.bias = nn.Parameter(torch.zeros(n_items))

    def forward(self, state: torch.Tensor, items: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        z = self.proj(state)
        if ids is None:
            return z @ items.T + self.bias
        return torch.einsum("bd,bmd->bm", z, items[ids]) + self.bias[ids]


class ItemTower(nn.Module):
    """Item vectors from id, category and brand embeddings and the standardised log-price."""

    def __init__(self, spec: AgentSpec, dim: int, out_dim: int) -> None:
        super().__init__()
        self.register_buffer("category", spec.item_category.clone())
        self.register_buffer("brand", spec.item_brand.clone())
        log_price = spec.item_price.log()
        self.register_buffer(
            "price", ((log_price - log_price.mean()) / log_price.std(correction=0).clamp_min(1e-6)).unsqueeze(-1)
        )
        self.id = nn.Embedding(spec.n_items, dim)
        self.category_emb = nn.Embedding(spec.n_categories, dim)
        self.brand_emb = nn.Embedding(spec.n_brands, dim)
        self.net = mlp([3 * dim + 1, out_dim, out_dim])

    def forward(self) -> torch.Tensor:
        """[N, out_dim] vectors of all items."""
        feats = torch.cat(
            [self.id.weight, self.category_emb(self.category), self.brand_emb(self.brand), self.price], -1
        )
        return self.net(feats)


class QNetwork(nn.Module):
    """Q values of every item, ``forward(obs) -> [B, N]``.

    Args:
        spec: what the shop shows agents (feature sizes, observable item features).
        head: ``"dot"`` (state . item + bias), ``"mlp"`` (an MLP on [state, item] pairs; B x N
            evaluations, for small catalogs) or ``"tabular"`` (a one-hot linear table over the
            enumerable shop's states; no features).
        history: ``"mean"``, ``"gru"``, ``"flat"`` (see :class:`HistoryEncoder`) or ``"none"`` (ignore the history).
        embed_dim: width of every embedding.
        hidden_dim: width of the state and item vectors.
    """

    def __init__(
        self, spec: AgentSpec, head: str = "dot", history: str = "mean", embed_dim: int = 32, hidden_dim: int = 64
    ) -> None:
        super().__init__()
        self.spec, self.head = spec, head
        if head == "tabular":
            # One-hot linear layer without bias: Q[s, a] = W[s, a], started at 0 like a Q table.
            self.table = nn.Embedding(n_tabular_states(spec), spec.n_items)
            nn.init.zeros_(self.table.weight)
            return
        self.user = UserTower(spec, embed_dim)
        self.history = HistoryEncoder(spec, embed_dim, history) if history != "none" else None
        state_in = UserTower.out_dim(spec, embed_dim) + (self.history.out_dim if self.history is not None else 0)
        self.state_net = mlp([state_in, hidden_dim, hidden_dim])
        self.items = ItemTower(spec, embed_dim, hidden_dim)
        if head == "dot":
            self.item_bias = nn.Parameter(torch.zeros(spec.n_items))
        else:
            self.pair_net = mlp([2 * hidden_dim, hidden_dim, 1])

    def forward(self, obs: Observation, items: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N] Q values. ``items``: the item tower's output [N, H] if already computed (see :class:`ServingQ`)."""
        if self.head == "tabular":
            return self.table(tabular_state_index(obs, self.spec))
        parts = [self.user(obs)] + ([self.history(obs)] if self.history is not None else [])
        state = self.state_net(torch.cat(parts, -1))  # [B, H]
        items = self.items() if items is None else items  # [N, H]
        if self.head == "dot":
            return state @ items.T + self.item_bias
        b, n = state.shape[0], items.shape[0]
        pairs = torch.cat([state.unsqueeze(1).expand(b, n, -1), items.unsqueeze(0).expand(b, n, -1)], -1)
        return self.pair_net(pairs).squeeze(-1)


class ServingQ(nn.Module):
    """A :class:`QNetwork` as a service runs it, ``forward(obs) -> [B, N]`` Q values.

    The item vectors do not depend on the user, so they are computed once, here, and kept as
    a buffer: a request then costs the state tower and one [B, H] x [H, N] product instead of
    the item tower over the whole catalog (50x less at N = 10,000). The numbers are the
    network's own: the same operations on the same weights.
    """

    def __init__(self, q: QNetwork) -> None:
        super().__init__()
        self.q = copy.deepcopy(q).eval().requires_grad_(False)
        if q.head == "tabular":
            self.register_buffer("item_vectors", None)
            return
        with torch.no_grad():
            self.register_buffer("item_vectors", self.q.items())
        self.q.items = None  # its output is the buffer above; the exported model does not carry it

    def forward(self, obs: Observation) -> torch.Tensor:
        return self.q(obs, self.item_vectors)
