"""Structured configs: the schema of every Hydra config group, and its cross-field rules.

Each dataclass here mirrors one config group under ``conf/`` and is registered in Hydra's
ConfigStore (see :func:`register_configs`), so a typo in an override or a value of the
wrong type fails at start with Hydra's own message. Rules that involve more than one
field (a slate larger than the catalog, a negative rate) are checked by the ``validate``
functions below, which raise :class:`ConfigError` with a sentence naming the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass, field, fields
from typing import Any, Optional


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the field and what is allowed."""


@dataclass
class EnvConfig:
    """The shop: catalog, users, response model, reward and session dynamics.

    Defaults describe the realistic shop (``conf/env/default.yaml``); the README explains
    how they were chosen. ``conf/env/tiny.yaml`` overrides them into a shop small enough
    to enumerate as an exact MDP.
    """

    # --- fitted to logs ------------------------------------------------------------
    # "obd": catalog, users and click model come from the Open Bandit Dataset's logs (see
    # rlrec/sim/fitted.py); the data then sets n_items, the categories, the user feature
    # sizes and the click utilities. "": a synthetic shop from the fields below.
    logs: str = ""
    logs_path: Optional[str] = None  # root of the dataset; None: the sample shipped with rlrec
    logs_campaign: str = "men"  # men, women, or all (full release)

    # --- catalog -------------------------------------------------------------------
    n_items: int = 1000  # N, catalog size
    n_categories: int = 10
    n_brands: int = 50  # brands are nested in categories: brand b sells category b % n_categories
    latent_dim: int = 8  # dimension of the latent item/user "fit" vectors
    category_spread: float = 0.6  # item latent = category centroid + this * noise (then normalised)
    price_log_mean_low: float = 2.3  # per-category mean log-price drawn in [low, high] (about 10..150)
    price_log_mean_high: float = 5.0
    price_log_std: float = 0.5  # spread of log-price inside a category
    quality_logit_std: float = 1.5  # latent quality = sigmoid(this * standard normal), in (0, 1)
    hype_quality_corr: float = 0.7  # hype = -corr * standardised quality + noise: hyped items tend to be worse

    # --- users ---------------------------------------------------------------------
    n_age_bands: int = 6
    n_genders: int = 3
    n_regions: int = 8
    preference_noise: float = 0.5  # user preference = feature effects + this * noise: features inform, not determine
    price_sensitivity_mean: float = 1.0  # mean coefficient on centred log-price in the purchase model
    price_sensitivity_noise: float = 0.3  # log-normal spread of price sensitivity around its age-band mean
    interest_drift: float = 0.1  # after a click, interest moves this fraction toward the clicked item
    satisfaction_levels: int = 5  # L: satisfaction is an integer in 0..L-1
    initial_satisfaction: int = 2
    observe_satisfaction: bool = False  # the tabular shop observes it; realistic shops do not
    history_len: int = 5  # H: recent (item, response) pairs in the observation

    # --- response model (see rlrec/sim/response.py) --------------------------------
    slate_size: int = 5  # K items shown per step
    no_click_utility: float = 3.0  # utility of ignoring the slate in the multinomial logit
    fit_weight: float = 3.0  # utility per unit of user-item fit (cosine of latent vectors)
    hype_weight: float = 1.2  # utility per unit of item hype
    position_decay: float = 0.5  # utility offset of slot k is -position_decay * log(1 + k)
    purchase_bias: float = -1.5  # logit of purchase given click at zero fit and average price
    purchase_fit_weight: float = 2.0
    satisfaction_purchase_weight: float = 3.0  # purchase logit gain from satisfaction level 0 to L-1
    rating_quality_weight: float = 6.0  # ordinal-logit rating: latent = this * quality + fit weight * fit
    rating_fit_weight: float = 1.0
    rating_thresholds: list[float] = field(default_factory=lambda: [0.8, 1.8, 2.8, 3.6])
    good_rating: int = 4  # a rating >= this raises satisfaction by one level
    bad_rating: int = 2  # a rating <= this lowers it by one level
    ignore_penalty_prob: float = 0.15  # probability an ignored slate lowers satisfaction by one level
    leave_prob_unhappy: float = 0.5  # per-step leave probability at satisfaction 0
    leave_prob_happy: float = 0.02  # per-step leave probability at satisfaction L-1 (geometric in between)
    horizon: int = 30  # a session ends after this many steps (a true terminal: the step count is observed)

    # --- reward: w_purchase * purchase + w_rating * rating + w_click * click + w_revenue * price * purchase
    w_purchase: float = 1.0
    w_rating: float = 0.2  # rating is 1..5 when a purchase happens, else 0
    w_click: float = 0.0
    w_revenue: float = 0.0  # per unit of price (prices are around 10..150)

    # --- runtime -------------------------------------------------------------------
    num_users: int = 1024  # B, users served in parallel
    seed: int = 0  # seeds the catalog, the user model and the simulator's generator
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    check_actions: bool = True  # validate slates each step (one host sync); benchmarks may turn it off
    # torch.compile the step's transition: ~1.6x faster at large B on CPU, ~4 s warm-up. Each
    # new shape or shop recompiles, and torch falls back to eager after its recompile_limit (8).
    compile: bool = False


def _require(condition: bool, field_name: str, allowed: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"env.{field_name} = {value!r} is invalid: it must be {allowed}.")


def validate_env_config(cfg: Any) -> None:
    """Check cross-field rules of an env config (a dataclass or a DictConfig)."""
    for name in ("n_items", "n_categories", "n_brands", "latent_dim", "n_age_bands", "n_genders",
                 "n_regions", "satisfaction_levels", "slate_size", "horizon", "num_users", "history_len"):
        value = getattr(cfg, name)
        _require(isinstance(value, int) and value >= 1, name, "an integer >= 1", value)
    _require(cfg.slate_size <= cfg.n_items, "slate_size",
             f"at most n_items = {cfg.n_items} (a slate shows distinct items)", cfg.slate_size)
    _require(cfg.n_brands >= cfg.n_categories, "n_brands",
             f">= n_categories = {cfg.n_categories} (every category needs a brand)", cfg.n_brands)
    _require(0 <= cfg.initial_satisfaction < cfg.satisfaction_levels, "initial_satisfaction",
             f"in 0..satisfaction_levels-1 = 0..{cfg.satisfaction_levels - 1}", cfg.initial_satisfaction)
    for name in ("w_purchase", "w_rating", "w_click", "w_revenue", "fit_weight", "hype_weight",
                 "position_decay", "purchase_fit_weight", "satisfaction_purchase_weight", "rating_quality_weight", "rating_fit_weight",
                 "preference_noise", "price_sensitivity_mean", "price_sensitivity_noise", "price_log_std",
                 "category_spread", "quality_logit_std"):
        value = getattr(cfg, name)
        _require(math.isfinite(value) and value >= 0, name, "a finite number >= 0", value)
    for name in ("interest_drift", "ignore_penalty_prob", "leave_prob_unhappy", "leave_prob_happy",
                 "hype_quality_corr"):
        value = getattr(cfg, name)
        _require(0.0 <= value <= 1.0, name, "a probability in [0, 1]", value)
    _require(cfg.price_log_mean_low <= cfg.price_log_mean_high, "price_log_mean_low",
             f"<= price_log_mean_high = {cfg.price_log_mean_high}", cfg.price_log_mean_low)
    thresholds = list(cfg.rating_thresholds)
    _require(len(thresholds) == 4 and all(a < b for a, b in zip(thresholds, thresholds[1:])),
             "rating_thresholds", "4 strictly increasing numbers (cut points between ratings 1..5)",
             thresholds)
    _require(1 <= cfg.bad_rating < cfg.good_rating <= 5, "good_rating",
             f"in {cfg.bad_rating + 1}..5 with 1 <= bad_rating < good_rating", cfg.good_rating)
    _require(cfg.logs in ("", "obd"), "logs", "'' (a synthetic shop) or 'obd' (fitted to the Open Bandit Dataset)",
             cfg.logs)
    if cfg.logs == "obd":
        _require(cfg.slate_size <= 3, "slate_size", "at most 3 with logs=obd (the logs have three positions)",
                 cfg.slate_size)
    _require(isinstance(cfg.device, str) and cfg.device != "", "device",
             "'auto', 'cpu', 'cuda' or 'cuda:<index>'", cfg.device)


def env_config_from(cfg: Any = None, **overrides: Any) -> EnvConfig:
    """Build a validated :class:`EnvConfig` from a dataclass, a mapping or a DictConfig, plus overrides.

    Unknown keys raise :class:`ConfigError` naming the key and listing the valid ones.
    """
    known = {f.name for f in fields(EnvConfig)}
    values: dict[str, Any] = {}
    if cfg is not None:
        if isinstance(cfg, EnvConfig):
            values = {name: getattr(cfg, name) for name in known}
        else:
            items = cfg.items() if hasattr(cfg, "items") else vars(cfg).items()
            values = {str(k): v for k, v in items if k != "_target_"}
    values.update(overrides)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown env field(s) {unknown}; valid fields are: {sorted(known)}.")
    if "rating_thresholds" in values:
        values["rating_thresholds"] = [float(x) for x in values["rating_thresholds"]]
    env_cfg = EnvConfig(**values)
    validate_env_config(env_cfg)
    return env_cfg


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
"""The repository's Hydra config tree (``conf/``): the one home of the presets."""


def env_preset(name: str = "default", **overrides: Any) -> EnvConfig:
    """The env config ``conf/env/<name>.yaml`` as an :class:`EnvConfig`, plus ``overrides``.

    For library use outside Hydra, e.g. ``Shop(env_preset("tiny", device="cpu"))``. Follows
    the yaml's ``defaults`` list within the env group, as Hydra composes it.
    """
    import yaml

    def load(preset: str) -> dict[str, Any]:
        path = CONF_DIR / "env" / f"{preset}.yaml"
        if not path.is_file():
            available = sorted(p.stem for p in (CONF_DIR / "env").glob("*.yaml"))
            raise ConfigError(f"env preset {preset!r} not found at {path}; available: {available}.")
        data = yaml.safe_load(path.read_text()) or {}
        merged: dict[str, Any] = {}
        for parent in data.pop("defaults", []):
            if isinstance(parent, str) and parent not in ("_self_", "base_env"):
                merged.update(load(parent))
        merged.update(data)
        return merged

    return env_config_from(load(name), **overrides)


# ----------------------------------------------------------------------------- agents
@dataclass
class DQNConfig:
    """``agent=dqn``; every field is a keyword of :class:`rlrec.agents.dqn.DQNAgent` (documented there)."""

    _target_: str = "rlrec.agents.dqn.DQNAgent"
    head: str = "dot"
    history: str = "mean"
    embed_dim: int = 32
    hidden_dim: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    gamma: float = 0.95
    buffer_size: int = 200_000
    batch_size: int = 512
    learning_starts: int = 5_000
    updates_per_step: int = 1
    target_update_interval: int = 250
    tau: float = 1.0
    double_dqn: bool = True
    loss: str = "huber"
    max_grad_norm: float = 10.0
    n_step: int = 1
    eps_start: float = 1.0
    eps_end: float = 0.05
    exploration_steps: int = 200_000


@dataclass
class BanditConfig(DQNConfig):
    """``agent=bandit``: the DQN's networks predicting the immediate reward (gamma is forced to 0)."""

    _target_: str = "rlrec.agents.baselines.BanditAgent"
    gamma: float = 0.0


@dataclass
class TabularQConfig:
    """``agent=tabular_q`` (needs ``env=tiny``); fields of :class:`rlrec.agents.tabular_q.TabularQAgent`."""

    _target_: str = "rlrec.agents.tabular_q.TabularQAgent"
    lr: float = 0.5
    lr_min: float = 0.0
    lr_decay_visits: float = 100.0
    gamma: float = 1.0
    eps_start: float = 1.0
    eps_end: float = 0.5
    exploration_steps: int = 1_000_000


@dataclass
class RandomConfig:
    _target_: str = "rlrec.agents.baselines.RandomAgent"


@dataclass
class PopularConfig:
    _target_: str = "rlrec.agents.baselines.PopularAgent"
    epsilon: float = 0.1


@dataclass
class MyopicConfig:
    _target_: str = "rlrec.agents.baselines.MyopicAgent"


@dataclass
class TrainerConfig:
    """``trainer=default``: the collect -> store -> update -> log -> checkpoint loop."""

    env_steps: int = 3000  # batched environment steps (each serves env.num_users users)
    log_every: int = 50  # environment steps between TensorBoard writes
    checkpoint_every: int = 250  # environment steps between checkpoints (0: only at the end)
    eval_users: int = 1024  # users in the final evaluation (one session each)
    eval_seed: int = 10_000  # seeds the evaluation users: common random numbers across runs
    eval_baselines: list[str] = field(default_factory=lambda: ["myopic_oracle"])  # also evaluated, same users
    resume: str = "auto"  # "auto": continue from the run directory's checkpoint if any; a path; or "never"
    progress: bool = True  # tqdm progress bar


@dataclass
class LoggerConfig:
    """``logger=tensorboard``."""

    tensorboard: bool = True
    log_dir: str = "tb"  # relative to the run directory


def register_configs() -> None:
    """Register every schema in Hydra's ConfigStore: ``env/base_env``, ``agent/base_<name>``, ..."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="env", name="base_env", node=EnvConfig)
    for name, node in [("dqn", DQNConfig), ("bandit", BanditConfig), ("tabular_q", TabularQConfig),
                       ("random", RandomConfig), ("popular", PopularConfig), ("myopic", MyopicConfig)]:
        cs.store(group="agent", name=f"base_{name}", node=node)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
    cs.store(group="logger", name="base_logger", node=LoggerConfig)
