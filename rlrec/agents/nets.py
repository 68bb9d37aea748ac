"""Neural pieces of the agents: user tower, history encoder, state encoder, item tower and heads.

The network scores every item at once. A state vector comes from the user tower (user
features, step, satisfaction when observed) and the history encoder; item vectors come
from the item tower (id, category, brand, price, and the content vector through a learned
projection when the shop has content). The ``dot`` head is
``Q[b, i] = state[b] . item[i] + bias[i]``: one matrix product for all N items.
The ``tabular`` head is a one-hot linear layer over the enumerable shop's states, the
form in which DQN reduces exactly to tabular Q-learning (see tests/test_agents.py).

New items. An item's id embedding and bias are learned only from transitions that acted on
it, so for an item never trained on they are whatever initialisation left. The item tower
keeps ``known`` ([N] bool, part of the network's state): the items in the catalog when the
network was built, and every item a transition has acted on since. Unknown items score with
a zero id embedding and bias, that is from their features and content alone. ``id_dropout``
zeroes random items' ids during training, so the network learns to score an item without
its id. Dropout (``dropout``, ``id_dropout``) draws from an explicit generator passed to
``forward(obs, noise=...)``: on in training only, and reproducible on resume.

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


def drop(x: torch.Tensor, p: float, noise: torch.Generator) -> torch.Tensor:
    """Inverted dropout of ``x`` with probability ``p``, drawn from ``noise`` (not the global generator)."""
    keep = torch.rand(x.shape, generator=noise, device=x.device) >= p
    return x * keep / (1.0 - p)


def run_mlp(net: nn.Sequential, x: torch.Tensor, dropout: float = 0.0, noise: torch.Generator | None = None):
    """``net(x)`` for a :func:`mlp`, with dropout after each hidden ReLU when ``noise`` is given."""
    if noise is None or dropout == 0:
        return net(x)
    for layer in net:
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            x = drop(x, dropout, noise)
    return x


def standardised_content(spec: AgentSpec) -> torch.Tensor:
    """[N, C] the spec's content vectors, each column to zero mean and unit variance over the catalog."""
    content = spec.item_content.float()
    return (content - content.mean(0)) / content.std(0, correction=0).clamp_min(1e-6)


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

    An item is its id embedding (zero for items whose id is not ``known``) plus, with
    ``use_content``, a learned projection of its content vector.
    """

    def __init__(self, spec: AgentSpec, dim: int, kind: str = "mean", use_content: bool = False) -> None:
        super().__init__()
        self.kind, self.pad = kind, spec.n_items
        self.item = nn.Embedding(spec.n_items + 1, dim, padding_idx=spec.n_items)
        self.code = nn.Embedding(response.N_RESPONSE_CODES, dim, padding_idx=response.PAD)
        self.gru = nn.GRU(dim, dim, batch_first=True) if kind == "gru" else None
        self.content = None
        if use_content and spec.item_content is not None:
            padded = torch.cat([standardised_content(spec), torch.zeros(1, spec.content_dim)])  # the pad: no content
            self.register_buffer("item_content", padded)
            self.content = nn.Linear(spec.content_dim, dim)
        self.code_alone = nn.Embedding(response.N_RESPONSE_CODES, dim) if kind == "flat" else None
        self.out_dim = 2 * dim * spec.history_len if kind == "flat" else dim

    def forward(self, obs: Observation, known: torch.Tensor | None = None) -> torch.Tensor:
        items = obs["history_items"]
        ids = items if known is None else torch.where(rows_known(known, items, self.pad), items, self.pad)
        vectors = self.item(ids)
        if self.content is not None:
            vectors = vectors + self.content(self.item_content[items])
        steps = vectors * self.code(obs["history_codes"])  # the response modulates the item
        if self.code_alone is not None:
            return torch.cat([steps, self.code_alone(obs["history_codes"])], -1).flatten(1)
        if self.gru is not None:
            return self.gru(steps)[1].squeeze(0)
        present = (obs["history_codes"] != response.PAD).unsqueeze(-1).float()
        return (steps * present).sum(1) / present.sum(1).clamp_min(1.0)


def rows_known(known: torch.Tensor, items: torch.Tensor, pad: int) -> torch.Tensor:
    """``known[items]`` for item ids that may be the padding id ``pad`` (= N; counted as known)."""
    return torch.cat([known, known.new_ones(1)])[items]


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
    """Item vectors from id, category and brand embeddings, the standardised log-price and, with
    ``use_content``, a learned projection of the content vector.

    ``known`` [N] bool (a buffer, saved with the network): items whose id embedding has been
    trained, or will be (those in the catalog when the tower was built). ``masks_ids`` is true
    when the catalog can change: then the ids of unknown items are zeroed.
    """

    def __init__(self, spec: AgentSpec, dim: int, out_dim: int, use_content: bool = False) -> None:
        super().__init__()
        self.register_buffer("category", spec.item_category.clone())
        self.register_buffer("brand", spec.item_brand.clone())
        log_price = spec.item_price.log()
        self.register_buffer(
            "price", ((log_price - log_price.mean()) / log_price.std(correction=0).clamp_min(1e-6)).unsqueeze(-1)
        )
        self.masks_ids = spec.item_available is not None
        known = torch.ones(spec.n_items, dtype=torch.bool) if spec.item_available is None else spec.item_available
        self.register_buffer("known", known.detach().clone().cpu())
        self.id = nn.Embedding(spec.n_items, dim)
        self.category_emb = nn.Embedding(spec.n_categories, dim)
        self.brand_emb = nn.Embedding(spec.n_brands, dim)
        content_dim = spec.content_dim if use_content else 0
        self.net = mlp([3 * dim + 1 + (dim if content_dim else 0), out_dim, out_dim])
        self.content = None
        if content_dim:
            self.register_buffer("item_content", standardised_content(spec))
            self.content = nn.Linear(content_dim, dim)

    def id_mask(self, id_dropout: float = 0.0, noise: torch.Generator | None = None) -> torch.Tensor | None:
        """[N] float: 1 where an item's id embedding and bias count, 0 where they are left out (an
        unknown item, or dropped by ``id_dropout`` when ``noise`` is given); None: every id counts."""
        mask = self.known.float() if self.masks_ids else None
        if noise is not None and id_dropout > 0:
            keep = (torch.rand(self.known.shape, generator=noise, device=self.known.device) >= id_dropout).float()
            mask = keep if mask is None else mask * keep
        return mask

    def forward(
        self, id_mask: torch.Tensor | None = None, dropout: float = 0.0, noise: torch.Generator | None = None
    ) -> torch.Tensor:
        """[N, out_dim] vectors of all items (``id_mask`` from :meth:`id_mask`)."""
        ids = self.id.weight if id_mask is None else self.id.weight * id_mask.unsqueeze(-1)
        parts = [ids, self.category_emb(self.category), self.brand_emb(self.brand), self.price]
        if self.content is not None:
            parts.append(self.content(self.item_content))
        return run_mlp(self.net, torch.cat(parts, -1), dropout, noise)


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
        dropout: dropout of the hidden units of the state and item MLPs (in training).
        id_dropout: probability that an item's id embedding and bias are left out (in training).
        use_content: take the spec's content vectors (when it has them) into the item and
            history vectors.
    """

    def __init__(
        self,
        spec: AgentSpec,
        head: str = "dot",
        history: str = "mean",
        embed_dim: int = 32,
        hidden_dim: int = 64,
        dropout: float = 0.0,
        id_dropout: float = 0.0,
        use_content: bool = True,
    ) -> None:
        super().__init__()
        self.spec, self.head = spec, head
        self.dropout, self.id_dropout = dropout, id_dropout
        if head == "tabular":
            # One-hot linear layer without bias: Q[s, a] = W[s, a], started at 0 like a Q table.
            self.table = nn.Embedding(n_tabular_states(spec), spec.n_items)
            nn.init.zeros_(self.table.weight)
            return
        self.user = UserTower(spec, embed_dim)
        self.history = HistoryEncoder(spec, embed_dim, history, use_content) if history != "none" else None
        state_in = UserTower.out_dim(spec, embed_dim) + (self.history.out_dim if self.history is not None else 0)
        self.state_net = mlp([state_in, hidden_dim, hidden_dim])
        self.items = ItemTower(spec, embed_dim, hidden_dim, use_content)
        if head == "dot":
            self.item_bias = nn.Parameter(torch.zeros(spec.n_items))
        else:
            self.pair_net = mlp([2 * hidden_dim, hidden_dim, 1])

    def forward(
        self,
        obs: Observation,
        noise: torch.Generator | None = None,
        items: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, N] Q values; ``noise`` (a generator) turns dropout on, for training. ``items`` and
        ``known``: the item tower's output [N, H] (unknown ids left out, its bias folded into
        ``item_bias``) and the known items, if already computed (see :class:`ServingQ`)."""
        if self.head == "tabular":
            return self.table(tabular_state_index(obs, self.spec))
        if items is None and self.items.masks_ids:
            known = self.items.known
        parts = [self.user(obs)] + ([self.history(obs, known)] if self.history is not None else [])
        state = run_mlp(self.state_net, torch.cat(parts, -1), self.dropout, noise)  # [B, H]
        id_mask = None
        if items is None:
            id_mask = self.items.id_mask(self.id_dropout, noise)
            items = self.items(id_mask, self.dropout, noise)  # [N, H]
        if self.head == "dot":
            return state @ items.T + (self.item_bias if id_mask is None else self.item_bias * id_mask)
        b, n = state.shape[0], items.shape[0]
        pairs = torch.cat([state.unsqueeze(1).expand(b, n, -1), items.unsqueeze(0).expand(b, n, -1)], -1)
        return run_mlp(self.pair_net, pairs, self.dropout, noise).squeeze(-1)


class ServingQ(nn.Module):
    """A :class:`QNetwork` as a service runs it, ``forward(obs) -> [B, N]`` Q values.

    The item vectors do not depend on the user, so they are computed once, here, and kept as
    a buffer: a request then costs the state tower and one [B, H] x [H, N] product instead of
    the item tower over the whole catalog (50x less at N = 10,000). The numbers are the
    network's own: the same operations on the same weights. The item vectors carry the content
    vectors' projection; items whose id the network does not know (new items) are scored
    without their id embedding and bias, as in the shop.
    """

    def __init__(self, q: QNetwork) -> None:
        super().__init__()
        self.q = copy.deepcopy(q).eval().requires_grad_(False)
        self.register_buffer("known", None)
        if q.head == "tabular":
            self.register_buffer("item_vectors", None)
            return
        with torch.no_grad():
            id_mask = self.q.items.id_mask()
            self.register_buffer("item_vectors", self.q.items(id_mask))
            if id_mask is not None:
                self.known = self.q.items.known.clone()
                if self.q.head == "dot":
                    self.q.item_bias.mul_(id_mask)
        self.q.items = None  # its output is the buffer above; the exported model does not carry it

    def forward(self, obs: Observation) -> torch.Tensor:
        return self.q(obs, items=self.item_vectors, known=self.known)
