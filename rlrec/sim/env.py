"""The batched shop: B users step together as tensors on one device.

``Shop.step(slate)`` shows each user a slate of K item ids and returns what happened.
All randomness comes from one seeded ``torch.Generator`` on the shop's device; every
probability comes from :mod:`rlrec.sim.response`. Sessions that end (the user leaves or
reaches the horizon) are replaced in place by fresh users, so the batch stays full.

Because the step count is part of the observation, reaching the horizon is a true
terminal: ``done`` rows must not be bootstrapped, and nothing is truncated.

The catalog can change (``env.holdout_items``, ``env.new_item_rate``): ``Shop.item_available``
[N] bool says which items are in it now (``None``: all, always). It is updated in place as
new items arrive and when an evaluation calls :meth:`Shop.open_catalog`, so agents built from
the shop's spec see it change; a slate that shows an item not yet in the catalog is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch

from rlrec.config import ConfigError, EnvConfig, env_config_from
from rlrec.sim import response
from rlrec.sim.catalog import (
    ARRIVAL_STREAM,
    CONTENT_STREAM,
    Catalog,
    make_arrivals,
    make_catalog,
    make_content,
    side_generator,
)
from rlrec.sim.users import UserModel, make_user_model
from rlrec.utils import make_generator, resolve_device, rows

Observation = dict[str, torch.Tensor]
"""Keys: ``user_features`` [B, 3] long (age band, gender, region); ``history_items`` [B, H]
long (``n_items`` pads); ``history_codes`` [B, H] long (codes in :mod:`rlrec.sim.response`);
``step`` [B] long; and ``satisfaction`` [B] long only when ``observe_satisfaction``."""


@dataclass
class ShopState:
    """The full (partly hidden) state of B sessions."""

    user_features: torch.Tensor  # [B, 3] long
    interest: torch.Tensor  # [B, D] unit vectors; starts at the user's preference, drifts toward clicks
    price_sensitivity: torch.Tensor  # [B]
    satisfaction: torch.Tensor  # [B] long, 0..L-1
    step: torch.Tensor  # [B] long, steps taken in this session
    history_items: torch.Tensor  # [B, H] long
    history_codes: torch.Tensor  # [B, H] long


class StepResult(NamedTuple):
    """What ``Shop.step`` returns. Rows with ``done`` were reset: ``obs`` is the new user's first."""

    obs: Observation  # next observation (after the in-place reset of finished rows)
    reward: torch.Tensor  # [B] float
    done: torch.Tensor  # [B] bool: the session ended (left, or reached the horizon); never bootstrap
    info: dict[str, Any]  # click, purchase [B] bool; rating [B] long (0 = none); choice [B] long
    # (slot clicked, -1 = none); item [B] long (clicked item, or the slate's first); price [B];
    # left [B] bool; final_obs: the observation reached before the reset (for done rows)


class UserDraws(NamedTuple):
    """The random numbers behind n new users (see :class:`~rlrec.sim.users.UserModel`)."""

    feature_uniforms: torch.Tensor  # [n, 3], or [n] with segment_probs
    preference_noise: torch.Tensor | None  # [n, D] standard normals (None: no preference noise)
    sensitivity_noise: torch.Tensor | None  # [n] standard normals (None: no price-sensitivity noise)


class StepDraws(NamedTuple):
    """Every random number of one sync-free step (:meth:`Shop.step_from`)."""

    uniforms: torch.Tensor  # [B, 5]: choice, purchase, rating, ignore penalty, leaving
    users: UserDraws  # a fresh user for every row; the rows that finish take theirs


class Shop:
    """A batched e-commerce simulator.

    Args:
        cfg: an :class:`~rlrec.config.EnvConfig`, a mapping or a DictConfig (``None``: defaults).
        **overrides: fields of ``EnvConfig`` to change, e.g. ``Shop(num_users=4096, device="cpu")``.

    Example::

        shop = Shop(num_users=256, seed=0)
        obs = shop.reset()
        slate = shop.random_slate()
        obs, reward, done, info = shop.step(slate)
    """

    def __init__(self, cfg: Any = None, **overrides: Any) -> None:
        self.cfg: EnvConfig = env_config_from(cfg, **overrides)
        if self.cfg.logs == "served":
            raise ConfigError(
                "env=served is a service's decision log, not a shop to run: evaluate policies on it with "
                "python evaluate.py env=served env.logs_path=<store> run_dir=<run>."
            )
        self.device = resolve_device(self.cfg.device)
        cfg = self.cfg
        # The catalog and user model come from a CPU generator so that one seed means one
        # shop on every device; the simulation's own generator lives on the device.
        world = make_generator(2 * cfg.seed, torch.device("cpu"))
        if cfg.logs == "obd":  # catalog, users and click utilities fitted to logged data
            from rlrec.sim.fitted import obd_world

            cfg, catalog, users, slot_bias = obd_world(cfg, world)
            self.cfg = cfg
        else:
            catalog, users = make_catalog(cfg, world), make_user_model(cfg, world)
            slot_bias = response.position_bias(cfg.slate_size, cfg)
        if cfg.content_path is not None:  # a real catalog's content vectors (checked: shape, values, checksum)
            from rlrec.data.content import load_content

            catalog.content = load_content(cfg.content_path, cfg.n_items, cfg.content_dim, cfg.content_sha256)
        elif cfg.content_dim > 0:
            catalog.content = make_content(cfg, catalog, side_generator(CONTENT_STREAM, cfg.seed))
        self.catalog: Catalog = catalog.to(self.device)
        # When each item enters the catalog (0: from the start); the catalog's clock counts steps.
        self.arrival = make_arrivals(cfg, cfg.n_items, side_generator(ARRIVAL_STREAM, cfg.seed)).to(self.device)
        self.catalog_step, self.catalog_open = 0, False
        changes = cfg.n_new_items > 0
        self.item_available: torch.Tensor | None = self.arrival.le(0) if changes else None  # [N] bool, live
        self.item_new: torch.Tensor | None = self.arrival.gt(0) if changes else None  # [N] bool: not there at start
        self.users: UserModel = users.to(self.device)
        self._slot_bias = slot_bias.to(self.device)
        self.generator = make_generator(2 * cfg.seed + 1, self.device)
        self.num_users = cfg.num_users
        self.n_items = cfg.n_items
        self.slate_size = cfg.slate_size
        # Compiling fuses the ~80 small tensor ops of a step into a few loops (inductor); the
        # eager function stays the reference, and tests hold the two to the same outcomes.
        self._dynamics = torch.compile(dynamics, dynamic=False) if cfg.compile else dynamics
        self.state: ShopState = self._new_users(self.num_users)

    # ---------------------------------------------------------------- sessions
    def _new_users(self, n: int) -> ShopState:
        return self._users_from(self._draw_users(n))

    def _draw_users(self, n: int) -> UserDraws:
        """The random numbers behind ``n`` new users, from the shop's generator."""
        return UserDraws(self.users.feature_uniforms(n, self.generator), *self.users.trait_noise(n, self.generator))

    def _users_from(self, draws: UserDraws) -> ShopState:
        """Fresh sessions of the users that ``draws`` describe (no randomness of its own)."""
        cfg, dev = self.cfg, self.device
        features = self.users.features_from(draws.feature_uniforms)
        preference, sensitivity = self.users.traits_from(features, draws.preference_noise, draws.sensitivity_noise)
        n = features.shape[0]
        return ShopState(
            user_features=features,
            interest=preference,
            price_sensitivity=sensitivity,
            satisfaction=torch.full((n,), cfg.initial_satisfaction, dtype=torch.long, device=dev),
            step=torch.zeros(n, dtype=torch.long, device=dev),
            history_items=torch.full((n, cfg.history_len), cfg.n_items, dtype=torch.long, device=dev),
            history_codes=torch.full((n, cfg.history_len), response.PAD, dtype=torch.long, device=dev),
        )

    def _replace_finished(self, state: ShopState, done: torch.Tensor) -> ShopState:
        """``state`` with every ``done`` row replaced by a fresh user.

        Users are drawn only for the finished rows (about B / mean session length per step):
        drawing B users and selecting with ``torch.where`` costs 3x more randomness. The
        price is one host sync per step on CUDA (``nonzero``); :meth:`step_from` is the
        sync-free twin.
        """
        finished = done.nonzero().squeeze(-1)
        fresh = self._new_users(finished.numel())
        out = {}
        for f in fields(state):
            out[f.name] = getattr(state, f.name).index_copy(0, finished, getattr(fresh, f.name))
        return ShopState(**out)

    # ---------------------------------------------------------------- the catalog
    @property
    def item_content(self) -> torch.Tensor | None:
        """[N, C] the items' content vectors (observable), or None."""
        return self.catalog.content

    def open_catalog(self, new_only: bool = False) -> Shop:
        """Put every item in the catalog for good, the held-out ones too (what an evaluation does).

        ``new_only``: the catalog is the new items alone (a cold-start test: every slate shows
        items the agent may never have seen). It needs a shop with new items.
        """
        self.catalog_open = True
        if new_only:
            if self.item_new is None or int(self.item_new.sum()) < self.slate_size:
                n_new = 0 if self.item_new is None else int(self.item_new.sum())
                raise ConfigError(
                    f"a catalog of new items only needs at least slate_size = {self.slate_size} of them; this "
                    f"shop has {n_new} (env.holdout_items = {self.cfg.holdout_items}): raise env.holdout_items."
                )
            self.item_available.copy_(self.item_new)  # in place: agents holding the tensor see the change
        elif self.item_available is not None:
            self.item_available.fill_(True)
        return self

    def _advance_catalog(self) -> None:
        """One step of the catalog's clock: the new items due by now arrive."""
        self.catalog_step += 1
        if self.item_available is not None and not self.catalog_open and self.cfg.new_item_rate > 0:
            torch.le(self.arrival, self.catalog_step, out=self.item_available)

    def restore_catalog(self, catalog_step: int, catalog_open: bool) -> None:
        """Set the catalog's clock (a resumed run) and the items available at it."""
        self.catalog_step, self.catalog_open = int(catalog_step), bool(catalog_open)
        if self.item_available is not None:
            self.item_available.copy_(self.arrival.le(self.catalog_step) | self.catalog_open)

    def reset(self, seed: int | None = None) -> Observation:
        """Start B fresh sessions. ``seed`` reseeds the simulator's generator (not the catalog)."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self.state = self._new_users(self.num_users)
        return self.observation()

    def first_observation(self, user_features: torch.Tensor) -> Observation:
        """The observation of fresh sessions of users with ``user_features`` [n, 3] (e.g. logged users).

        Draws the users' hidden traits from the shop's generator; the observation does not show them.
        """
        state = self._new_users(user_features.shape[0])
        state.user_features = user_features.to(self.device)
        return self.observation(state)

    def observation(self, state: ShopState | None = None) -> Observation:
        """The agent's view of ``state`` (default: the current one). Hidden traits are left out."""
        s = self.state if state is None else state
        obs = {
            "user_features": s.user_features,
            "history_items": s.history_items,
            "history_codes": s.history_codes,
            "step": s.step,
        }
        if self.cfg.observe_satisfaction:
            obs["satisfaction"] = s.satisfaction
        return obs

    # ---------------------------------------------------------------- stepping
    def _check_slate(self, slate: torch.Tensor, check_ids: bool) -> torch.Tensor:
        b, k = self.num_users, self.slate_size
        if not isinstance(slate, torch.Tensor):
            slate = torch.as_tensor(slate, device=self.device)
        if slate.dim() == 1 and k == 1:
            slate = slate.unsqueeze(-1)
        if slate.shape != (b, k):
            raise ValueError(
                f"slate has shape {tuple(slate.shape)}; it must be [num_users, slate_size] = [{b}, {k}] item ids."
            )
        if slate.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"slate has dtype {slate.dtype}; it must hold integer item ids (torch.long).")
        if slate.device != self.device:
            slate = slate.to(self.device)
        if check_ids:
            low, high = int(slate.min()), int(slate.max())
            if low < 0 or high >= self.n_items:
                bad = low if low < 0 else high
                raise ValueError(
                    f"slate holds item id {bad}, out of range: item ids must be in "
                    f"0..n_items-1 = 0..{self.n_items - 1}."
                )
            if self.item_available is not None:
                shown = self.item_available[slate.long()]
                if not bool(shown.all()):
                    bad = int(slate[~shown][0])
                    raise ValueError(
                        f"slate shows item {bad}, which is not in the catalog now (a new item yet to arrive, see "
                        "env.holdout_items): recommend only items whose entry in the shop's item_available "
                        "(the agent spec's) is true."
                    )
        return slate.long()

    def step(self, slate: torch.Tensor, check: bool | None = None) -> StepResult:
        """Show ``slate`` [B, K] (long item ids) to every user; sample and return the responses.

        ``check``: validate the item ids (one host sync); None follows ``env.check_actions``. The
        trainer passes False for its agent's slates, which are ids it drew from the catalog.
        """
        slate = self._check_slate(slate, self.cfg.check_actions if check is None else check)
        # One uniform per random decision: choice, purchase, rating, ignore penalty, leaving.
        uniforms = torch.rand(slate.shape[0], 5, generator=self.generator, device=self.device)
        reached, reward, done, info = self._run_dynamics(slate, uniforms)
        self.state = self._replace_finished(reached, done)
        self._advance_catalog()
        info["final_obs"] = self.observation(reached)
        return StepResult(self.observation(), reward, done, info)

    def _run_dynamics(self, slate: torch.Tensor, uniforms: torch.Tensor) -> tuple:
        args = (self.cfg, self.catalog, self._slot_bias, self.state, slate, uniforms)
        if self._dynamics is dynamics:
            return dynamics(*args)
        try:
            return self._dynamics(*args)
        except Exception as err:  # torch.compile fails lazily, at the first call
            if type(err).__module__.startswith("torch._"):
                raise RuntimeError(
                    f"env.compile=true, but torch.compile could not build the shop's step on "
                    f"{self.device} ({type(err).__name__}: {str(err).splitlines()[0]}). On CPU it "
                    f"needs a working C++ compiler; set env.compile=false to run eagerly."
                ) from err
            raise

    # ---------------------------------------------------------------- the sync-free step
    def draw_step(self) -> StepDraws:
        """Every random number that :meth:`step_from` uses, from the shop's generator: the step's
        uniforms (as :meth:`step` draws them), then a fresh user for every row."""
        uniforms = torch.rand(self.num_users, 5, generator=self.generator, device=self.device)
        return StepDraws(uniforms, self._draw_users(self.num_users))

    def step_from(self, state: ShopState, slate: torch.Tensor, draws: StepDraws) -> tuple[ShopState, StepResult]:
        """:meth:`step` from ``state`` with its random numbers given, and without host synchronisation.

        Returns the next state (``self.state`` and the generator are left alone) and the step's
        result. Finished rows take the fresh user drawn for their row (``torch.where`` over a full
        batch) where :meth:`step` draws users for the finished rows only, which needs their count
        (``nonzero``, a host sync): the same distribution, other random numbers. ``slate`` must
        hold valid item ids (it is not checked). The compiled training step
        (:mod:`rlrec.train.compiled`) runs it inside its graph.
        """
        reached, reward, done, info = dynamics(self.cfg, self.catalog, self._slot_bias, state, slate, draws.uniforms)
        fresh = self._users_from(draws.users)
        next_state = ShopState(
            **{
                f.name: torch.where(
                    rows_mask(done, getattr(reached, f.name)), getattr(fresh, f.name), getattr(reached, f.name)
                )
                for f in fields(reached)
            }
        )
        info["final_obs"] = self.observation(reached)
        return next_state, StepResult(self.observation(next_state), reward, done, info)

    # ---------------------------------------------------------------- privileged views
    def expected_item_reward(self, items: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        """[B, M] true expected immediate reward of showing each of ``items`` (default: all N) alone in slot 0.

        Privileged (it reads hidden traits): the myopic oracle and the exact MDP use it.
        """
        cfg, cat, s = self.cfg, self.catalog, self.state
        items = torch.arange(self.n_items, device=self.device) if items is None else items.to(self.device)
        parts = []
        for start in range(0, items.numel(), chunk):  # bounded memory for big catalogs
            ids = items[start : start + chunk]
            fit = s.interest @ cat.latent[ids].T  # [B, M]
            parts.append(expected_reward(fit, ids, s.price_sensitivity, s.satisfaction, cat, cfg, self._slot_bias[0]))
        return torch.cat(parts, dim=1)

    def random_slate(self) -> torch.Tensor:
        """[B, K] uniformly random slates of distinct items in the catalog, from the shop's generator."""
        b, k = self.num_users, self.slate_size
        return available_random_slates(b, self.item_available, self.n_items, k, self.generator)


def dynamics(
    cfg: EnvConfig, cat: Catalog, slot_bias: torch.Tensor, s: ShopState, slate: torch.Tensor, u: torch.Tensor
) -> tuple[ShopState, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One step of B sessions as a pure function: the state reached, reward, done and the responses.

    ``u`` [B, 5] holds one uniform per random decision (choice, purchase, rating, ignore
    penalty, leaving); each is compared with a probability from :mod:`rlrec.sim.response`.
    Finished rows are not reset here (see ``Shop._replace_finished``).
    """
    fit = torch.bmm(rows(cat.latent, slate), s.interest.unsqueeze(-1)).squeeze(-1)  # [B, K]
    probs = response.click_probs(response.click_utilities(fit, rows(cat.hype, slate), slot_bias, cfg), cfg)
    choice = sample_categorical(probs, u[:, 0]) - 1  # -1: no click, else the slot clicked
    clicked = choice >= 0
    slot = choice.clamp_min(0).unsqueeze(-1)
    item = slate.gather(1, slot).squeeze(-1)  # the clicked item, or the first shown when ignored
    item_fit = fit.gather(1, slot).squeeze(-1)

    buy_prob = response.purchase_prob(
        item_fit, rows(cat.log_price_centered, item), s.price_sensitivity, s.satisfaction, cfg
    )
    purchased = clicked & (u[:, 1] < buy_prob)
    drawn_rating = sample_categorical(response.rating_probs(rows(cat.quality, item), item_fit, cfg), u[:, 2]) + 1
    rating = torch.where(purchased, drawn_rating, torch.zeros_like(drawn_rating))
    ignore_penalized = ~clicked & (u[:, 3] < cfg.ignore_penalty_prob)
    satisfaction = response.next_satisfaction(s.satisfaction, rating, ignore_penalized, cfg)
    left = u[:, 4] < response.leave_prob(satisfaction, cfg)
    price = rows(cat.price, item)
    reward = response.reward(clicked, purchased, rating, price, cfg)

    interest = s.interest
    if cfg.interest_drift > 0:
        pull = (cfg.interest_drift * clicked.float()).unsqueeze(-1)
        interest = torch.nn.functional.normalize(interest + pull * (rows(cat.latent, item) - interest), dim=-1)
    code = torch.where(
        purchased,
        response.PURCHASED + rating - 1,
        torch.where(clicked, torch.full_like(rating, response.CLICKED), torch.full_like(rating, response.IGNORED)),
    )
    step = s.step + 1
    reached = ShopState(
        user_features=s.user_features,
        interest=interest,
        price_sensitivity=s.price_sensitivity,
        satisfaction=satisfaction,
        step=step,
        history_items=torch.cat([s.history_items[:, 1:], item.unsqueeze(-1)], dim=1),
        history_codes=torch.cat([s.history_codes[:, 1:], code.unsqueeze(-1)], dim=1),
    )
    done = left | (step >= cfg.horizon)
    info = {
        "click": clicked,
        "purchase": purchased,
        "rating": rating,
        "choice": choice,
        "item": item,
        "price": price,
        "left": left,
    }
    return reached, reward, done, info


def expected_reward(
    fit: torch.Tensor,
    items: torch.Tensor,
    price_sensitivity: torch.Tensor,
    satisfaction: torch.Tensor,
    catalog: Catalog,
    cfg: EnvConfig,
    slot_bias: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """[B, M] expected immediate reward of showing item ``items[m]`` alone, given user-item ``fit`` [B, M]."""
    utilities = response.click_utilities(fit, catalog.hype[items], slot_bias, cfg)
    click = response.click_probs(utilities.unsqueeze(-1), cfg)[..., 1]
    buy = click * response.purchase_prob(
        fit, catalog.log_price_centered[items], price_sensitivity.unsqueeze(-1), satisfaction.unsqueeze(-1), cfg
    )
    ratings = torch.arange(1, response.N_RATINGS + 1, device=fit.device, dtype=fit.dtype)
    mean_rating = (response.rating_probs(catalog.quality[items], fit, cfg) * ratings).sum(-1)
    return response.reward(click, buy, buy * mean_rating, catalog.price[items], cfg)


def rows_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` [B] viewed as [B, 1, ...] to broadcast against ``like`` [B, ...]."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def sample_categorical(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """[B] index drawn from each row of ``probs`` [B, C] by inverting its CDF at ``uniform`` [B]."""
    if torch.compiler.is_compiling():
        # The same running sum, unrolled over the C columns: inductor fuses it into one loop,
        # whereas cumsum is an opaque kernel that splits the compiled step in two.
        cdf = probs[..., 0]
        index = (uniform >= cdf).long()
        for column in range(1, probs.shape[-1]):
            cdf = cdf + probs[..., column]
            index = index + (uniform >= cdf).long()
    else:
        index = (uniform.unsqueeze(-1) >= probs.cumsum(-1)).sum(-1)
    return index.clamp_max(probs.shape[-1] - 1)  # the CDF can end a hair below 1


def random_slates(b: int, n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """[b, k] slates of k distinct ids from 0..n-1, uniform over subsets (Floyd's algorithm, in random order).

    Loops over the k slots only, never over users or items, so it costs O(b * k^2).
    """
    if k > n:
        raise ConfigError(f"slate_size = {k} is larger than the catalog (n_items = {n}).")
    return slates_from_uniforms(n, *random_slate_uniforms(b, k, generator))


def random_slate_uniforms(b: int, k: int, generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The uniforms behind :func:`random_slates`: one [b] per slot (Floyd's picks), then [b, k] (the shuffle)."""
    device = generator.device
    picks = [torch.rand(b, generator=generator, device=device) for _ in range(k)]
    return picks, torch.rand(b, k, generator=generator, device=device)


def slates_from_uniforms(n: int, picks: list[torch.Tensor], order: torch.Tensor) -> torch.Tensor:
    """[b, k] random slates from :func:`random_slate_uniforms`' numbers (no randomness of its own)."""
    b, k = order.shape
    chosen = torch.empty(b, k, dtype=torch.long, device=order.device)
    for j, top in enumerate(range(n - k, n)):
        pick = (picks[j] * (top + 1)).long().clamp_max(top)
        taken = (chosen[:, :j] == pick.unsqueeze(-1)).any(-1)
        chosen[:, j] = torch.where(taken, torch.full_like(pick, top), pick)
    # Floyd's order is biased (the last slot is often the largest id); shuffle slots per row.
    return chosen.gather(1, order.argsort(dim=-1))


def available_random_slates(
    b: int, available: torch.Tensor | None, n: int, k: int, generator: torch.Generator
) -> torch.Tensor:
    """[b, k] uniformly random slates of distinct items among those ``available`` ([n] bool; None: all n).

    With every item available it draws exactly what :func:`random_slates` draws.
    """
    if available is None:
        return random_slates(b, n, k, generator)
    ids = available.nonzero().squeeze(-1)  # one host sync: the catalog's size now
    return ids[random_slates(b, ids.numel(), k, generator)]
