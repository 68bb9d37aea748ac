"""The product catalog: N items with observed features and hidden latent properties.

Besides the catalog itself (:func:`make_catalog`), two optional pieces come from generators
of their own, so that switching them on leaves the catalog, the users and every sampled
response of the same shop unchanged: the items' content vectors (:func:`make_content`) and
the step at which each item enters the catalog (:func:`make_arrivals`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlrec.config import EnvConfig

# Seed offsets of the side generators. The shop's own generators are seeded 2 * seed and
# 2 * seed + 1, far below these, so no two streams coincide.
CONTENT_STREAM = 1 << 40
ARRIVAL_STREAM = 1 << 41
USER_STREAM = 1 << 42


def side_generator(stream: int, seed: int) -> torch.Generator:
    """A CPU generator for one optional piece of the shop (``stream``: one of the offsets above)."""
    return torch.Generator().manual_seed(stream + int(seed))


@dataclass
class Catalog:
    """Item tensors, each with a leading dimension N.

    The agent may see ``category``, ``brand``, ``price``, ``content`` and the item id.
    ``quality``, ``hype`` and ``latent`` are the shop's secret: they drive the response model.
    """

    category: torch.Tensor  # [N] long
    brand: torch.Tensor  # [N] long
    price: torch.Tensor  # [N] float, log-normal within each category
    log_price_centered: torch.Tensor  # [N] float, log(price) minus its catalog mean (the purchase model's input)
    quality: torch.Tensor  # [N] float in [0, 1]: drives ratings
    hype: torch.Tensor  # [N] float, about standard normal: drives clicks, anti-correlated with quality
    latent: torch.Tensor  # [N, D] float, unit vectors: user-item fit is their dot product
    content: torch.Tensor | None = None  # [N, C] float: content vectors (image/text embeddings), or None

    @property
    def n_items(self) -> int:
        return self.category.shape[0]

    def to(self, device: torch.device) -> Catalog:
        return Catalog(**{name: None if v is None else v.to(device) for name, v in vars(self).items()})


def make_catalog(cfg: EnvConfig, generator: torch.Generator) -> Catalog:
    """Draw a catalog from ``generator`` (on CPU, so the catalog is identical on every device)."""
    n, d = cfg.n_items, cfg.latent_dim
    g = generator
    brand = torch.randint(cfg.n_brands, (n,), generator=g)
    category = brand % cfg.n_categories  # each brand sells one category
    centroids = torch.nn.functional.normalize(torch.randn(cfg.n_categories, d, generator=g), dim=-1)
    latent = centroids[category] + cfg.category_spread * torch.randn(n, d, generator=g) / d**0.5
    latent = torch.nn.functional.normalize(latent, dim=-1)

    category_log_mean = cfg.price_log_mean_low + (cfg.price_log_mean_high - cfg.price_log_mean_low) * torch.rand(
        cfg.n_categories, generator=g
    )
    log_price = category_log_mean[category] + cfg.price_log_std * torch.randn(n, generator=g)

    quality = torch.sigmoid(cfg.quality_logit_std * torch.randn(n, generator=g))  # logit-normal in (0, 1)
    quality_z = (quality - quality.mean()) / quality.std(correction=0).clamp_min(1e-6)
    rho = cfg.hype_quality_corr
    hype = -rho * quality_z + (1.0 - rho**2) ** 0.5 * torch.randn(n, generator=g)

    return Catalog(
        category=category,
        brand=brand,
        price=log_price.exp(),
        log_price_centered=log_price - log_price.mean(),
        quality=quality,
        hype=hype,
        latent=latent,
    )


def make_content(cfg: EnvConfig, catalog: Catalog, generator: torch.Generator) -> torch.Tensor:
    """[N, content_dim] synthetic content vectors: what an image or text encoder would say about each item.

    What the item is and how good it is: a fixed random linear projection of its hidden fit
    vector and its quality (each of the D + 1 columns scaled to unit variance, so quality
    weighs like one fit dimension), plus Gaussian noise of std ``content_noise`` per
    coordinate; each coordinate's signal has variance about 1. So the content is informative
    but not the truth, and ``content_noise`` sets how informative: a learned projection of
    ``content_dim >= D + 1`` coordinates recovers the truth up to noise of std about
    ``content_noise * sqrt((D + 1) / content_dim)``. Hype (how attractive an item looks) is
    left out: content tells a recommender what a customer would be glad to have bought.
    """
    n, d = catalog.latent.shape
    quality = catalog.quality
    quality_z = (quality - quality.mean()) / quality.std(correction=0).clamp_min(1e-6)
    truth = torch.cat([catalog.latent * d**0.5, quality_z.unsqueeze(-1)], dim=-1).cpu()  # [N, D + 1]
    projection = torch.randn(d + 1, cfg.content_dim, generator=generator) / (d + 1) ** 0.5
    noise = torch.randn(n, cfg.content_dim, generator=generator)
    return truth @ projection + cfg.content_noise * noise


def make_arrivals(cfg: EnvConfig, n_items: int, generator: torch.Generator) -> torch.Tensor:
    """[N] float64: the shop's step count at which each item enters the catalog.

    0 for the items there from the start. ``holdout_items`` of the catalog (chosen at random)
    are new: with ``new_item_rate`` r > 0 the j-th of them (in a random order) arrives after
    step ``ceil(j / r)``; with r = 0 never (``inf``), until an evaluation opens the catalog.
    """
    arrival = torch.zeros(n_items, dtype=torch.float64)
    m = round(cfg.holdout_items * n_items)
    if m == 0:
        return arrival
    new = torch.randperm(n_items, generator=generator)[:m]
    order = torch.arange(1, m + 1, dtype=torch.float64)
    # (the 1e-9 keeps float rounding from pushing j / r past a whole step: 3 / 0.1 = 30.000000000000004)
    arrival[new] = (order / cfg.new_item_rate - 1e-9).ceil() if cfg.new_item_rate > 0 else math.inf
    return arrival
