"""The product catalog: N items with observed features and hidden latent properties."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlrec.config import EnvConfig


@dataclass
class Catalog:
    """Item tensors, each with a leading dimension N.

    The agent may see ``category``, ``brand``, ``price`` and the item id. ``quality``,
    ``hype`` and ``latent`` are the shop's secret: they drive the response model.
    """

    category: torch.Tensor  # [N] long
    brand: torch.Tensor  # [N] long
    price: torch.Tensor  # [N] float, log-normal within each category
    log_price_centered: torch.Tensor  # [N] float, log(price) minus its catalog mean (the purchase model's input)
    quality: torch.Tensor  # [N] float in [0, 1]: drives ratings
    hype: torch.Tensor  # [N] float, about standard normal: drives clicks, anti-correlated with quality
    latent: torch.Tensor  # [N, D] float, unit vectors: user-item fit is their dot product

    @property
    def n_items(self) -> int:
        return self.category.shape[0]

    def to(self, device: torch.device) -> Catalog:
        return Catalog(**{name: value.to(device) for name, value in vars(self).items()})


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
