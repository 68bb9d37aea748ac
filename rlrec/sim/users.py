"""Users: categorical features that inform a hidden preference vector and a price sensitivity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlrec.config import EnvConfig
from rlrec.utils import rows

# Column order of the user feature tensor [B, 3].
USER_FEATURES = ("age_band", "gender", "region")


@dataclass
class UserModel:
    """How a user's hidden traits follow from their features.

    ``preference = normalise(age_effect[age] + gender_effect[gender] + region_effect[region]
    + preference_noise * noise)`` and ``price_sensitivity = age_price_sensitivity[age] *
    exp(price_sensitivity_noise * noise)``. With both noises at 0 the features determine the
    user exactly: a finite set of segments, which is what the tabular shop enumerates.
    """

    feature_sizes: tuple[int, int, int]  # (n_age_bands, n_genders, n_regions)
    age_effect: torch.Tensor  # [A, D]
    gender_effect: torch.Tensor  # [G, D]
    region_effect: torch.Tensor  # [R, D]
    age_price_sensitivity: torch.Tensor  # [A]
    preference_noise: float
    price_sensitivity_noise: float
    # [n_segments] how often each feature combination arrives (segment_index order); None: uniform
    segment_probs: torch.Tensor | None = None
    # [A] how often each age band arrives (env.age_mix), the other columns uniform; None: uniform
    age_probs: torch.Tensor | None = None

    @property
    def n_segments(self) -> int:
        a, g, r = self.feature_sizes
        return a * g * r

    def to(self, device: torch.device) -> UserModel:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return UserModel(**moved)

    def sample_features(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n, 3] long: uniform age band, gender and region, or segments drawn from ``segment_probs``."""
        return self.features_from(self.feature_uniforms(n, generator))

    def feature_uniforms(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The uniforms behind ``n`` users' features: [n] (a segment each) with ``segment_probs``, else [n, 3]."""
        shape = (n,) if self.segment_probs is not None else (n, 3)
        return torch.rand(shape, generator=generator, device=self.age_effect.device)

    def features_from(self, u: torch.Tensor) -> torch.Tensor:
        """[n, 3] long features from :meth:`feature_uniforms` (no randomness of its own)."""
        if self.segment_probs is not None:  # inverse CDF, as sample_categorical, with one shared CDF
            cdf = self.segment_probs.cumsum(0)
            segment = torch.searchsorted(cdf, u, right=True).clamp_max(cdf.numel() - 1)
            return self.segment_features()[segment]
        sizes = torch.tensor(self.feature_sizes, device=u.device, dtype=torch.float32)
        features = (u * sizes).long()
        if self.age_probs is not None:  # the same uniform, through the tilted age distribution's inverse CDF
            cdf = self.age_probs.cumsum(0)
            features[:, 0] = torch.searchsorted(cdf, u[:, 0].contiguous(), right=True).clamp_max(cdf.numel() - 1)
        return features

    def traits(self, features: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden (preference [n, D] unit vectors, price_sensitivity [n]) of users with ``features``.

        With ``generator=None`` the noise is left out: the traits of the segment itself.
        """
        noise = self.trait_noise(features.shape[0], generator) if generator is not None else (None, None)
        return self.traits_from(features, *noise)

    def trait_noise(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The standard normals behind ``n`` users' traits: preference noise [n, D] and price-sensitivity
        noise [n], each None when its noise scale is 0 (nothing is drawn then)."""
        device, d = self.age_effect.device, self.age_effect.shape[-1]
        preference = torch.randn(n, d, generator=generator, device=device) if self.preference_noise > 0 else None
        sensitivity = torch.randn(n, generator=generator, device=device) if self.price_sensitivity_noise > 0 else None
        return preference, sensitivity

    def traits_from(
        self,
        features: torch.Tensor,
        preference_noise: torch.Tensor | None = None,
        sensitivity_noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`traits` with its noise given (from :meth:`trait_noise`; None leaves that noise out)."""
        age, gender, region = features.unbind(-1)
        mean = rows(self.age_effect, age) + rows(self.gender_effect, gender) + rows(self.region_effect, region)
        sensitivity = rows(self.age_price_sensitivity, age)
        if preference_noise is not None:
            mean = mean + self.preference_noise * (preference_noise / mean.shape[-1] ** 0.5)
        if sensitivity_noise is not None:
            sensitivity = sensitivity * (self.price_sensitivity_noise * sensitivity_noise).exp()
        return torch.nn.functional.normalize(mean, dim=-1), sensitivity

    def segment_features(self) -> torch.Tensor:
        """[n_segments, 3] long: every feature combination, in :func:`segment_index` order."""
        a, g, r = self.feature_sizes
        grid = torch.cartesian_prod(torch.arange(a), torch.arange(g), torch.arange(r))
        return grid.reshape(-1, 3).to(self.age_effect.device)

    def segment_index(self, features: torch.Tensor) -> torch.Tensor:
        """[...] long: the row of ``segment_features()`` that equals ``features`` [..., 3]."""
        _, g, r = self.feature_sizes
        return (features[..., 0] * g + features[..., 1]) * r + features[..., 2]


def make_user_model(cfg: EnvConfig, generator: torch.Generator) -> UserModel:
    """Draw the feature effects from ``generator`` (on CPU, identical on every device).

    With ``cfg.user_seed`` set they come from a generator of their own instead: another
    population of customers for the same catalog.
    """
    from rlrec.sim.catalog import USER_STREAM, side_generator

    d = cfg.latent_dim
    g = generator if cfg.user_seed is None else side_generator(USER_STREAM, cfg.user_seed)
    # Age and region carry most of the signal; gender a little. Scales are relative to the
    # unit-norm result, so they set how much each feature says about the preference.
    age_effect = torch.randn(cfg.n_age_bands, d, generator=g) / d**0.5
    gender_effect = 0.5 * torch.randn(cfg.n_genders, d, generator=g) / d**0.5
    region_effect = 0.8 * torch.randn(cfg.n_regions, d, generator=g) / d**0.5
    # Younger bands are more price sensitive: a spread of +-40% around the mean.
    ramp = torch.linspace(1.4, 0.6, cfg.n_age_bands) if cfg.n_age_bands > 1 else torch.ones(1)
    return UserModel(
        feature_sizes=(cfg.n_age_bands, cfg.n_genders, cfg.n_regions),
        age_effect=age_effect,
        gender_effect=gender_effect,
        region_effect=region_effect,
        age_price_sensitivity=cfg.price_sensitivity_mean * ramp,
        preference_noise=cfg.preference_noise,
        price_sensitivity_noise=cfg.price_sensitivity_noise,
        age_probs=age_mix_probs(cfg.age_mix, cfg.n_age_bands),
    )


def age_mix_probs(tilt: float, n_age_bands: int) -> torch.Tensor | None:
    """[A] arrival probabilities of the age bands, ``exp(-tilt * b / (A - 1))`` normalised; None when uniform."""
    if tilt == 0 or n_age_bands == 1:
        return None
    weights = torch.exp(-tilt * torch.linspace(0.0, 1.0, n_age_bands, dtype=torch.float64))
    return (weights / weights.sum()).float()
