"""A shop fitted to logged data (``env=obd``): the Open Bandit Dataset's items, users and clicks.

What comes from the logs (the random and the BTS logs of one campaign, pooled):

- the catalog: one item per row of ``item_context.csv``; its category is
  ``item_feature_1`` and its brand ``item_feature_2``; its price follows the standardised
  ``item_feature_0`` on the default shop's log-price scale;
- the users: the first three hashed user features (``user_feature_0..2``) play the roles
  of the synthetic shop's three user columns, and new users arrive with the joint
  frequency of those values in the logs (``user_feature_3`` and the affinities are left
  out: the shop's observation has three user columns);
- the clicks: a click model fitted on the logs (item and position effects, the L2 prior
  cross-validated; :mod:`rlrec.data.click_model`) becomes the multinomial logit's
  utilities: an item's ``hype`` is its fitted item effect, the slots' utilities are the
  fitted position effects and the no-click utility is minus the fitted intercept, with
  ``fit_weight = 0`` and ``hype_weight = 1``. A lone item is then clicked with exactly the
  fitted probability, and a slate of rare clicks (about 0.5% per slot here) nearly so.

What stays synthetic, as in the default shop: the items' hidden quality (anti-correlated
with their click appeal, ``hype_quality_corr``) and latent fit vectors, the users'
preferences and price sensitivity, and so the purchase, rating, satisfaction and leaving
dynamics. The logs hold clicks only, so nothing else can be fitted.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from rlrec.config import ConfigError, EnvConfig, validate_env_config
from rlrec.sim.catalog import Catalog
from rlrec.sim.users import UserModel, make_user_model

N_USER_COLUMNS = 3


@functools.lru_cache(maxsize=4)
def _fit_obd(path: str | None, campaign: str, seed: int):
    """Load and pool the logs of ``campaign`` and fit the shop's click model (cached: ~10 s)."""
    from rlrec.data.click_model import fit_click_model, pool_logs
    from rlrec.data.obd import load_obd

    logs = pool_logs(*(load_obd(path, policy=p, campaign=campaign, with_affinity=False) for p in ("random", "bts")))
    logs.user_features = logs.user_features[:, :N_USER_COLUMNS].contiguous()
    model = fit_click_model(logs, user_l2_scale=math.inf, seed=seed)
    return logs, model


def obd_logs(cfg: EnvConfig):
    """The pooled logs behind an ``env=obd`` shop (user feature codes as the shop observes them)."""
    return _fit_obd(cfg.logs_path, cfg.logs_campaign, cfg.seed)[0]


def obd_click_model(cfg: EnvConfig):
    """The click model an ``env=obd`` shop clicks with (item and position effects)."""
    return _fit_obd(cfg.logs_path, cfg.logs_campaign, cfg.seed)[1]


def obd_world(cfg: EnvConfig, generator: torch.Generator) -> tuple[EnvConfig, Catalog, UserModel, torch.Tensor]:
    """(the config with the data's sizes and click utilities, catalog, user model, slot utilities [K])."""
    logs, model = _fit_obd(cfg.logs_path, cfg.logs_campaign, cfg.seed)
    sizes = [int(logs.user_features[:, i].max()) + 1 for i in range(N_USER_COLUMNS)]
    categories = logs.item_categories[:, 0]
    brands = logs.item_categories[:, 1]
    n_categories = int(categories.max()) + 1
    cfg = dataclasses.replace(
        cfg,
        n_items=logs.n_items,
        n_categories=n_categories,
        n_brands=max(int(brands.max()) + 1, n_categories),
        n_age_bands=sizes[0],
        n_genders=sizes[1],
        n_regions=sizes[2],
        fit_weight=0.0,
        hype_weight=1.0,
        no_click_utility=-float(model.bias),
    )
    try:
        validate_env_config(cfg)
    except ConfigError as err:
        raise ConfigError(f"the shop fitted to {cfg.logs_campaign} logs is invalid: {err}") from err

    n, d = cfg.n_items, cfg.latent_dim
    g = generator
    centroids = torch.nn.functional.normalize(torch.randn(n_categories, d, generator=g), dim=-1)
    latent = torch.nn.functional.normalize(
        centroids[categories] + cfg.category_spread * torch.randn(n, d, generator=g) / d**0.5, dim=-1
    )
    price_z = (logs.item_price - logs.item_price.mean()) / logs.item_price.std(correction=0).clamp_min(1e-6)
    log_price = 0.5 * (cfg.price_log_mean_low + cfg.price_log_mean_high) + cfg.price_log_std * price_z
    hype = model.item.float()
    hype_z = (hype - hype.mean()) / hype.std(correction=0).clamp_min(1e-6)
    rho = cfg.hype_quality_corr
    quality = torch.sigmoid(cfg.quality_logit_std * (-rho * hype_z + (1 - rho**2) ** 0.5 * torch.randn(n, generator=g)))
    catalog = Catalog(
        category=categories.clone(),
        brand=brands.clone(),
        price=log_price.exp(),
        log_price_centered=log_price - log_price.mean(),
        quality=quality,
        hype=hype,
        latent=latent,
    )

    users = make_user_model(cfg, g)
    counts = torch.bincount(users.segment_index(logs.user_features), minlength=users.n_segments).float()
    users.segment_probs = counts / counts.sum()
    slot_utilities = model.position[: cfg.slate_size].float()
    return cfg, catalog, users, slot_utilities
