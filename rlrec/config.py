"""Configuration: the schema of every Hydra config group and the one mechanism that checks it.

Each config group under ``conf/`` has a dataclass schema registered in Hydra's ConfigStore
(:func:`register_configs`): the env, trainer, logger and evaluation schemas live here, each
agent's next to the agent (``rlrec/agents/<name>.py``). A field's default and its comment are
written once, in its dataclass; the yaml files under ``conf/`` only select and override.

A typo or a wrong type in an override fails while Hydra composes the config. Values are
checked by :func:`check_config` before anything runs: every field against its declared type
and rule (:func:`param`: bounds, choices; numbers must be finite), then the dataclass's own
``check()`` for rules that involve several fields. A failure raises :class:`ConfigError`
with one sentence naming the field, the value, what is allowed and how to fix it.
"""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the field and what is allowed."""


# ----------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """What values a field accepts beyond its type: bounds, choices, or a description."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    text: str | None = None  # overrides the generated description of what is allowed

    def accepts(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def describe(self, kind: type) -> str:
        if self.text:
            return self.text
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        low = f">= {self.ge}" if self.ge is not None else f"> {self.gt}" if self.gt is not None else None
        high = f"<= {self.le}" if self.le is not None else f"< {self.lt}" if self.lt is not None else None
        bounds = " and ".join(b for b in (low, high) if b)
        if kind is int:
            return f"an integer {bounds}".strip()
        return bounds or "a finite number"


def param(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple | None = None,
    text: str | None = None,
) -> Any:
    """A dataclass field with a default and the rule its values must follow (see :func:`check_config`)."""
    rule = Rule(ge=ge, gt=gt, le=le, lt=lt, choices=choices, text=text)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def probability(default: float) -> Any:
    """A field holding a probability in [0, 1]."""
    return param(default, ge=0.0, le=1.0, text="a probability in [0, 1]")


def require(condition: bool, name: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` ``<name> = <value> is invalid: it must be <allowed>`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{name} = {value!r} is invalid: it must be {allowed}.")


def _type_of(hint: Any) -> type | None:
    """The scalar type a field must hold (int, float, bool, str), or None for containers."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _type_of(args[0]) if len(args) == 1 else None
    return hint if hint in (int, float, bool, str) else None


def check_config(cfg: Any, prefix: str) -> None:
    """Check every field of the dataclass instance ``cfg`` (type, finiteness, rule), then ``cfg.check()``.

    ``prefix`` is the field's path on the command line (``"agent"``, ``"env"``...), used in messages.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        if f.name.startswith("_"):
            continue
        value, name, kind = getattr(cfg, f.name), f"{prefix}.{f.name}" if prefix else f.name, _type_of(hints[f.name])
        optional = typing.get_origin(hints[f.name]) is typing.Union
        if value is None and optional:
            continue
        if is_dataclass(value):
            check_config(value, name)
            continue
        example = _example(f, name)
        if kind is bool:
            require(isinstance(value, bool), name, value, f"true or false{example}")
        elif kind is int:
            require(isinstance(value, int) and not isinstance(value, bool), name, value, f"an integer{example}")
        elif kind is float:
            require(isinstance(value, (int, float)) and not isinstance(value, bool), name, value, f"a number{example}")
            require(math.isfinite(value), name, value, f"a finite number{example}")
        elif kind is str:
            require(isinstance(value, str), name, value, f"a string{example}")
        rule = f.metadata.get("rule")
        if rule is not None:
            require(rule.accepts(value), name, value, rule.describe(kind) + example)
    check = getattr(cfg, "check", None)
    if check is not None:
        check(prefix)


def _example(f: Any, name: str) -> str:
    """``"; e.g. agent.lr=0.001 (the default)"``: the fix, spelled as an override."""
    default = (
        f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
    )
    if default is None or isinstance(default, (list, dict)):
        return ""
    shown = str(default).lower() if isinstance(default, bool) else default
    return f"; e.g. {name}={shown} (the default)"


def build_config(schema: type, values: Any, prefix: str) -> Any:
    """``schema(**values)`` checked by :func:`check_config`; unknown keys name the valid ones.

    ``values`` may be a mapping, a DictConfig or an instance of ``schema``; nested groups
    (dataclass-typed fields) are built the same way. Keys starting with ``_`` (Hydra's
    ``_target_``) are ignored.
    """
    cfg = _construct(schema, values, prefix)
    check_config(cfg, prefix)
    return cfg


def _construct(schema: type, values: Any, prefix: str) -> Any:
    if isinstance(values, schema):
        return values
    if values is None:
        values = {}
    elif not isinstance(values, dict):
        from omegaconf import DictConfig, OmegaConf

        values = OmegaConf.to_container(values, resolve=True) if isinstance(values, DictConfig) else dict(values)
    values = {str(k): v for k, v in values.items() if not str(k).startswith("_")}
    known = [f.name for f in fields(schema) if not f.name.startswith("_")]
    unknown = sorted(set(values) - set(known))
    if unknown:
        what = f"{prefix} field(s)" if prefix else "key(s)"
        raise ConfigError(f"unknown {what} {unknown}; valid fields are: {sorted(known)}.")
    hints = typing.get_type_hints(schema)
    for f in fields(schema):
        if f.name in values and is_dataclass(hints[f.name]):
            values[f.name] = _construct(hints[f.name], values[f.name], f"{prefix}.{f.name}" if prefix else f.name)
    return schema(**values)


# ----------------------------------------------------------------------------- the shop
@dataclass
class EnvConfig:
    """The shop: catalog, users, response model, reward and session dynamics.

    The defaults are the realistic default shop, the project's benchmark (the README explains
    how they were chosen). ``conf/env/tiny.yaml`` overrides them into a shop small enough to
    enumerate as an exact MDP.
    """

    # --- fitted to logs ------------------------------------------------------------
    # "obd": catalog, users and click model come from the Open Bandit Dataset's logs (see
    # rlrec/sim/fitted.py); the data then sets n_items, the categories, the user feature
    # sizes and the click utilities. "served": the decision log of rlrec's own service
    # (rlrec/data/served.py; evaluate.py only, it is not a shop). "": a synthetic shop from the fields below.
    logs: str = param("", choices=("", "obd", "served"))
    # obd: root of the dataset (None: the sample shipped with rlrec); served: the store (a SQLite file or URL)
    logs_path: Optional[str] = None
    logs_campaign: str = param("men", choices=("men", "women", "all"))  # "all": full release only

    # --- catalog -------------------------------------------------------------------
    n_items: int = param(1000, ge=1)  # N, catalog size
    n_categories: int = param(10, ge=1)
    n_brands: int = param(50, ge=1)  # brands are nested in categories: brand b sells category b % n_categories
    latent_dim: int = param(8, ge=1)  # dimension of the latent item/user "fit" vectors
    category_spread: float = param(0.6, ge=0)  # item latent = category centroid + this * noise (then normalised)
    price_log_mean_low: float = 2.3  # per-category mean log-price drawn in [low, high] (about 10..150)
    price_log_mean_high: float = 5.0
    price_log_std: float = param(0.5, ge=0)  # spread of log-price inside a category
    quality_logit_std: float = param(1.5, ge=0)  # latent quality = sigmoid(this * standard normal), in (0, 1)
    # hype = -corr * standardised quality + noise: hyped items tend to be worse
    hype_quality_corr: float = probability(0.7)

    # --- item content (see rlrec/sim/catalog.py make_content, rlrec/data/content.py) ---
    # Content vectors, what an image or text encoder would give: d floats per item, seen by the
    # agent. 0: no content (the default shop). Synthetic content is a noisy random projection
    # of the item's hidden fit vector and quality, drawn from a generator of its own (the
    # catalog, users and responses stay those of the same shop without content).
    content_dim: int = param(0, ge=0)
    # Noise std per content coordinate, the signal's being about 1: the informativeness knob
    # (1: informative, not the truth; 30 and more: noise).
    content_noise: float = param(1.0, ge=0)
    content_path: Optional[str] = None  # a real catalog's content: .npy or .safetensors, shape [n_items, content_dim]
    content_sha256: Optional[str] = None  # the file's expected sha256 (hex); None: not checked

    # --- new items -------------------------------------------------------------------
    # Share of the catalog that is not in it when the shop starts ("new items", chosen at
    # random from a generator of their own): agents cannot show them until they arrive, and
    # an evaluation opens the whole catalog (held-out items never shown in training).
    holdout_items: float = probability(0.0)
    # New items arriving per environment step, in a fixed random order, until none are left;
    # 0: they arrive only when an evaluation opens the catalog.
    new_item_rate: float = param(0.0, ge=0)

    # --- users ---------------------------------------------------------------------
    n_age_bands: int = param(6, ge=1)
    n_genders: int = param(3, ge=1)
    n_regions: int = param(8, ge=1)
    # Another population of customers for the same catalog: None draws the user model (how
    # features map to preference) after the catalog from `seed`; an integer draws it from
    # its own generator (evaluate.py's held-out users).
    user_seed: Optional[int] = param(None, ge=0)
    # Arrival mix of age bands (the preference mix): 0 uniform; a > 0 makes band b arrive with
    # weight exp(-a * b / (n_age_bands - 1)) (younger, more price-sensitive customers), a < 0 older.
    age_mix: float = 0.0
    # user preference = feature effects + this * noise: features inform, not determine
    preference_noise: float = param(0.5, ge=0)
    price_sensitivity_mean: float = param(1.0, ge=0)  # mean coefficient on centred log-price in the purchase model
    price_sensitivity_noise: float = param(0.3, ge=0)  # log-normal spread of price sensitivity around its age-band mean
    interest_drift: float = probability(0.1)  # after a click, interest moves this fraction toward the clicked item
    satisfaction_levels: int = param(5, ge=1)  # L: satisfaction is an integer in 0..L-1
    initial_satisfaction: int = 2
    observe_satisfaction: bool = False  # the tabular shop observes it; realistic shops do not
    history_len: int = param(5, ge=1)  # H: recent (item, response) pairs in the observation

    # --- response model (see rlrec/sim/response.py) --------------------------------
    slate_size: int = param(5, ge=1)  # K items shown per step
    no_click_utility: float = 3.0  # utility of ignoring the slate in the multinomial logit
    fit_weight: float = param(3.0, ge=0)  # utility per unit of user-item fit (cosine of latent vectors)
    hype_weight: float = param(1.2, ge=0)  # utility per unit of item hype
    position_decay: float = param(0.5, ge=0)  # utility offset of slot k is -position_decay * log(1 + k)
    purchase_bias: float = -1.5  # logit of purchase given click at zero fit and average price
    purchase_fit_weight: float = param(2.0, ge=0)
    satisfaction_purchase_weight: float = param(3.0, ge=0)  # purchase logit gain from satisfaction level 0 to L-1
    rating_quality_weight: float = param(6.0, ge=0)  # ordinal-logit rating: latent = this * quality + fit weight * fit
    rating_fit_weight: float = param(1.0, ge=0)
    rating_thresholds: list[float] = field(default_factory=lambda: [0.8, 1.8, 2.8, 3.6])  # cut points of ratings 1..5
    good_rating: int = 4  # a rating >= this raises satisfaction by one level
    bad_rating: int = 2  # a rating <= this lowers it by one level
    ignore_penalty_prob: float = probability(0.15)  # probability an ignored slate lowers satisfaction by one level
    leave_prob_unhappy: float = probability(0.5)  # per-step leave probability at satisfaction 0
    leave_prob_happy: float = probability(0.02)  # per-step leave probability at satisfaction L-1 (geometric in between)
    horizon: int = param(30, ge=1)  # a session ends after this many steps (a true terminal: the step count is observed)

    # --- reward: w_purchase * purchase + w_rating * rating + w_click * click + w_revenue * price * purchase
    w_purchase: float = param(1.0, ge=0)
    w_rating: float = param(0.2, ge=0)  # rating is 1..5 when a purchase happens, else 0
    w_click: float = param(0.0, ge=0)
    w_revenue: float = param(0.0, ge=0)  # per unit of price (prices are around 10..150)

    # --- runtime -------------------------------------------------------------------
    num_users: int = param(1024, ge=1)  # B, users served in parallel
    seed: int = param(0, ge=0)  # seeds the catalog, the user model and the simulator's generator
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    check_actions: bool = True  # validate slates each step (one host sync); benchmarks may turn it off
    # torch.compile the step's dynamics: ~1.6x faster at large B on CPU, ~4 s warm-up. Each
    # new shape or shop recompiles, and torch falls back to eager after its recompile_limit (8).
    compile: bool = False

    @property
    def user_feature_sizes(self) -> tuple[int, int, int]:
        """Categories of the user feature columns, in observation order (age band, gender, region)."""
        return (self.n_age_bands, self.n_genders, self.n_regions)

    @property
    def n_new_items(self) -> int:
        """Items held out of the catalog at the start (``holdout_items`` of ``n_items``, rounded)."""
        return round(self.holdout_items * self.n_items)

    def check(self, prefix: str = "env") -> None:
        """The rules that involve several fields."""
        require(
            self.slate_size <= self.n_items,
            f"{prefix}.slate_size",
            self.slate_size,
            f"at most n_items = {self.n_items} (a slate shows distinct items)",
        )
        require(
            self.n_brands >= self.n_categories,
            f"{prefix}.n_brands",
            self.n_brands,
            f">= n_categories = {self.n_categories} (every category needs a brand)",
        )
        require(
            0 <= self.initial_satisfaction < self.satisfaction_levels,
            f"{prefix}.initial_satisfaction",
            self.initial_satisfaction,
            f"in 0..satisfaction_levels-1 = 0..{self.satisfaction_levels - 1}",
        )
        require(
            self.price_log_mean_low <= self.price_log_mean_high,
            f"{prefix}.price_log_mean_low",
            self.price_log_mean_low,
            f"<= price_log_mean_high = {self.price_log_mean_high}",
        )
        thresholds = list(self.rating_thresholds)
        require(
            len(thresholds) == 4
            and all(math.isfinite(t) for t in thresholds)
            and all(a < b for a, b in zip(thresholds, thresholds[1:])),
            f"{prefix}.rating_thresholds",
            thresholds,
            "4 strictly increasing numbers (cut points between ratings 1..5)",
        )
        require(
            1 <= self.bad_rating < self.good_rating <= 5,
            f"{prefix}.good_rating",
            self.good_rating,
            f"in {self.bad_rating + 1}..5 with 1 <= bad_rating < good_rating",
        )
        if self.logs == "obd":
            require(
                self.slate_size <= 3,
                f"{prefix}.slate_size",
                self.slate_size,
                "at most 3 with logs=obd (the logs have three positions)",
            )
        require(self.device != "", f"{prefix}.device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:<index>'")
        require(
            self.slate_size <= self.n_items - self.n_new_items,
            f"{prefix}.holdout_items",
            self.holdout_items,
            f"small enough to leave slate_size = {self.slate_size} items in the catalog at the start (it "
            f"leaves {self.n_items - self.n_new_items} of n_items = {self.n_items})",
        )
        require(
            self.new_item_rate == 0 or self.holdout_items > 0,
            f"{prefix}.new_item_rate",
            self.new_item_rate,
            "0 unless env.holdout_items > 0 (new items arrive from the share held out at the start)",
        )
        if self.content_path is not None:
            require(
                self.content_dim > 0,
                f"{prefix}.content_dim",
                self.content_dim,
                f"the width of the vectors in content_path = {self.content_path!r} (the expected shape is "
                "[n_items, content_dim])",
            )
        if self.content_sha256 is not None:
            digest = self.content_sha256.lower()
            require(
                self.content_path is not None,
                f"{prefix}.content_sha256",
                self.content_sha256,
                "null unless env.content_path names a content file",
            )
            require(
                len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
                f"{prefix}.content_sha256",
                self.content_sha256,
                "64 hexadecimal digits (the output of sha256sum <file>)",
            )
        require(
            self.age_mix == 0 or self.logs == "",
            f"{prefix}.age_mix",
            self.age_mix,
            "0 with logs=obd (the fitted shop's users arrive as often as in the logs)",
        )


def validate_env_config(cfg: EnvConfig) -> None:
    """Check an :class:`EnvConfig` (field rules and cross-field rules); raise :class:`ConfigError`."""
    check_config(cfg, "env")


def env_config_from(cfg: Any = None, **overrides: Any) -> EnvConfig:
    """Build a validated :class:`EnvConfig` from a dataclass, a mapping or a DictConfig, plus overrides.

    Unknown keys raise :class:`ConfigError` naming the key and listing the valid ones.
    """
    if isinstance(cfg, EnvConfig):
        values = {f.name: getattr(cfg, f.name) for f in fields(EnvConfig)}
    elif cfg is None:
        values = {}
    else:
        items = cfg.items() if hasattr(cfg, "items") else vars(cfg).items()
        values = {str(k): v for k, v in items}
    values.update(overrides)
    if "rating_thresholds" in values and values["rating_thresholds"] is not None:
        values["rating_thresholds"] = [float(x) for x in values["rating_thresholds"]]
    return build_config(EnvConfig, values, "env")


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
"""The repository's Hydra config tree (``conf/``): the one home of the presets."""


def env_preset(name: str = "default", **overrides: Any) -> EnvConfig:
    """The env config ``conf/env/<name>.yaml`` as an :class:`EnvConfig`, plus ``overrides``.

    For library use outside Hydra, e.g. ``Shop(env_preset("tiny", device="cpu"))``. Follows
    the yaml's ``defaults`` list within the env group as Hydra composes it (a test holds the
    two to the same result).
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
            if isinstance(parent, str) and parent != "_self_" and not parent.startswith("/"):
                merged.update(load(parent))
        merged.update(data)
        return merged

    return env_config_from(load(name), **overrides)


# ----------------------------------------------------------------------------- training and evaluation
@dataclass
class TrainerConfig:
    """``trainer=default``: the collect -> store -> update -> log -> checkpoint loop."""

    env_steps: int = param(3000, ge=1)  # batched environment steps (each serves env.num_users users)
    log_every: int = param(50, ge=1)  # environment steps between TensorBoard writes (and divergence checks)
    checkpoint_every: int = param(250, ge=0)  # environment steps between checkpoints (0: only at the end)
    eval_users: int = param(1024, ge=1)  # users in the final evaluation (one session each)
    eval_seed: int = param(10_000, ge=0)  # seeds the evaluation users: common random numbers across runs
    eval_baselines: list[str] = field(default_factory=lambda: ["myopic_oracle"])  # also evaluated, same users
    resume: str = "auto"  # "auto": continue from the run directory's checkpoint if any; a path; or "never"
    # Resuming with a run config that differs from the checkpoint's is refused (the differing
    # keys are listed); true accepts it and records the change in the checkpoint.
    allow_config_change: bool = False
    progress: bool = True  # tqdm progress bar
    # Validation: every val_every environment steps (0: never) the greedy policy plays val_users
    # sessions in the validation shop (TensorBoard eval/val_return), and the checkpoint with the
    # best mean return so far is kept as best.pt. The validation shop is "train" (the training
    # shop, other users), "heldout_users" (another population, drawn from val_user_seed, not the
    # one evaluate.py holds out) or a shifted shop conf/env/shift_<name>.yaml. New items stay
    # out of it: they are evaluate.py's test.
    val_every: int = param(0, ge=0)
    val_users: int = param(512, ge=1)
    val_seed: int = param(30_000, ge=0)  # seeds the validation users: the same sessions at every validation
    val_shop: str = "heldout_users"
    val_user_seed: int = param(2, ge=0)
    # The launch-free training step (rlrec/train/compiled.py, agent=dqn): collect, store, sample and
    # update without host synchronisation, captured by torch.compile. Fresh users are drawn for
    # every row, so the same seed gives another (equally distributed) run than the eager loop.
    compile: bool = False
    # torch.compile's mode for it; "auto": "reduce-overhead" (CUDA graphs) on CUDA, "default" on CPU
    compile_mode: str = param("auto", choices=("auto", "default", "reduce-overhead", "max-autotune-no-cudagraphs"))
    # Data-parallel over the ranks that torchrun or SLURM starts (rlrec/train/distributed.py): each
    # rank its own users and replay, gradients averaged; rank 0 logs and checkpoints.
    distributed: bool = False
    # Off-policy training from logs instead of the shop (rlrec/train/logged.py, agent=reinforce): "obd"
    # (with env=obd: the Open Bandit logs at env.logs_path) or "served" (the service's store at
    # env.logs_path, with the shop it served). Each env step is then one gradient step on logged rows.
    logged_data: str = param("", choices=("", "obd", "served"))

    def check(self, prefix: str = "trainer") -> None:
        from rlrec.eval.rollout import check_baseline_names
        from rlrec.eval.shifts import check_shop_names

        check_baseline_names(self.eval_baselines, f"{prefix}.eval_baselines")
        check_shop_names(self.val_shop, f"{prefix}.val_shop", allow_train=True)
        require(
            self.resume != "",
            f"{prefix}.resume",
            self.resume,
            "'auto', 'never', or the path of a run directory or checkpoint file",
        )


@dataclass
class LoggerConfig:
    """``logger=tensorboard``."""

    tensorboard: bool = True
    log_dir: str = param("tb", text="a non-empty directory name")  # relative to the run directory

    def check(self, prefix: str = "logger") -> None:
        require(self.log_dir.strip() != "", f"{prefix}.log_dir", self.log_dir, "a non-empty directory name")


@dataclass
class OPEConfig:
    """Off-policy estimates on logged data (``evaluate.py env=obd``)."""

    n_boot: int = param(1000, ge=1)  # bootstrap resamples for every interval
    seed: int = param(0, ge=0)  # seeds the bootstrap and the reward model's cross-validation folds


@dataclass
class EvaluateConfig:
    """``python evaluate.py``: a trained run in the simulator, or policies on logged data (``env=obd``,
    ``env=served``)."""

    run_dir: Optional[str] = None  # the output directory of a train run (holds checkpoint.pt and tb/)
    checkpoint: Optional[str] = None  # or a checkpoint file
    eval_users: int = param(2048, ge=1)  # sessions per policy (one per user)
    eval_seed: int = param(20_000, ge=0)  # the evaluation users: the same for every policy (common random numbers)
    device: Optional[str] = None  # None: the device the run trained on ("auto" picks CUDA when present)
    out_dir: Optional[str] = None  # None: the run directory (simulator) or outputs/eval/<date>/<time> (logs)
    baselines: list[str] = field(default_factory=lambda: ["random", "myopic_oracle"])  # evaluated beside the run
    # Generalisation: also evaluate in these shops and report the gap to the training shop:
    # "heldout_users" (another population of customers, drawn from heldout_user_seed) and the
    # shifted shops conf/env/shift_<name>.yaml (same catalog; see rlrec/eval/shifts.py).
    shifts: list[str] = field(default_factory=list)
    heldout_user_seed: int = param(1, ge=0)
    ope: OPEConfig = field(default_factory=lambda: OPEConfig())  # env=obd, env=served: the off-policy estimates
    # the env group: None (a trained run is evaluated in its own shop), env=obd or env=served (logged data)
    env: Any = None

    def check(self, prefix: str = "") -> None:
        from rlrec.eval.rollout import check_baseline_names
        from rlrec.eval.shifts import check_shop_names

        check_baseline_names(self.baselines, "baselines")
        check_shop_names(self.shifts, "shifts")


# ----------------------------------------------------------------------------- serving
@dataclass
class ExplorationConfig:
    """How a service picks a slate from its model's scores. The probability of every shown item
    at its position follows from these settings and is computed exactly (rlrec/serve/exploration.py).

    ``kind``: ``greedy`` shows the k best-scored candidates; ``epsilon_greedy`` shows, with
    probability ``epsilon``, a uniformly random slate of k distinct candidates instead;
    ``softmax`` shows, with probability ``epsilon``, a uniformly random slate, else a
    Plackett-Luce sample (softmax(score / temperature), drawn without replacement) from the
    ``pool`` best-scored candidates; ``manifest`` (the service's default) uses the settings the
    model was exported with.
    """

    kind: str = param("manifest", choices=("manifest", "greedy", "epsilon_greedy", "softmax"))
    epsilon: float = probability(0.1)  # share of uniformly random slates (every candidate can be shown)
    temperature: float = param(1.0, gt=0)  # softmax: sampling weights exp(score / temperature)
    pool: int = param(100, ge=1)  # softmax: Plackett-Luce over this many best-scored candidates

    def resolved(self, manifest_settings: dict[str, Any]) -> ExplorationConfig:
        """These settings, or the model's own (``manifest_settings``) when ``kind`` is ``manifest``."""
        if self.kind != "manifest":
            return self
        return build_config(ExplorationConfig, manifest_settings, "exploration")


@dataclass
class StoreConfig:
    """Where a service logs its decisions and the feedback on them (rlrec/serve/store.py).

    One writer commits records in batches: a request is answered once its record is
    committed, so a crash (kill -9) loses no answered request.
    """

    path: str = "served.db"  # the SQLite file (created if missing; WAL mode)
    url: Optional[str] = None  # any SQLAlchemy URL instead, e.g. postgresql+psycopg://user@host/rlrec
    max_batch: int = param(512, ge=1)  # records per commit at most
    # how long the writer waits for more records before committing a batch (0: commit as soon as
    # it is free; records that arrive during a commit share the next one)
    max_delay_ms: float = param(0.0, ge=0, le=1000)
    # SQLite: NORMAL survives a crash of the service; FULL also a crash of the machine (an fsync per commit)
    synchronous: str = param("NORMAL", choices=("NORMAL", "FULL"))
    max_pending: int = param(10_000, ge=1)  # records waiting for the writer before new requests get 503
    # who commits: "auto" = SQLite on the event loop's thread (a local commit costs less than waking
    # another thread), a server database on a writer thread (its commits wait for the network)
    writer: str = param("auto", choices=("auto", "loop", "thread"))

    def check(self, prefix: str = "store") -> None:
        require(
            self.url is not None or self.path.strip() != "",
            f"{prefix}.path",
            self.path,
            "a file name (or set store.url to a SQLAlchemy URL)",
        )


@dataclass
class ServeConfig:
    """``python serve.py``: a trained policy as an HTTP recommendation service (rlrec/serve/app.py)."""

    run_dir: Optional[str] = None  # a train run: exported into <run_dir>/serving/<version>/, then served
    model: Optional[str] = None  # or an exported model directory (python -m rlrec.serve.export), watched for swaps
    host: str = param("127.0.0.1", text="a host name or address to listen on")  # 0.0.0.0: every interface
    port: int = param(8000, ge=1, le=65535)
    workers: int = param(1, ge=1, le=64)  # server processes (each loads the model and writes to the store)
    # the engine that scores: "auto" = ONNX Runtime when installed and the export has an ONNX
    # graph (about 2x faster here on small batches), else TorchScript
    backend: str = param("auto", choices=("auto", "torchscript", "onnx"))
    max_batch: int = param(64, ge=1, le=4096)  # requests scored together when they arrive together
    # seeds each request's exploration with (seed, request_id): a decision can be replayed
    # exactly; None draws a fresh seed at every start
    seed: Optional[int] = param(None, ge=0)
    reload_interval_s: float = param(1.0, ge=0)  # how often the model directory is checked for a new version (0: never)
    admin: bool = True  # POST /v1/admin/reload (swap the model now); turn off where clients are not trusted
    log_level: str = param("info", choices=("critical", "error", "warning", "info", "debug"))
    exploration: ExplorationConfig = field(default_factory=lambda: ExplorationConfig())
    store: StoreConfig = field(default_factory=lambda: StoreConfig())

    def check(self, prefix: str = "") -> None:
        if self.run_dir is None and self.model is None:
            raise ConfigError(
                "say what to serve: run_dir=<a train run's directory> or model=<an exported model directory>."
            )
        if self.run_dir is not None and self.model is not None:
            raise ConfigError(
                f"run_dir={self.run_dir} and model={self.model} are both set: serve one of them "
                "(run_dir exports the run first; model serves an export)."
            )
        require(self.host.strip() != "", "host", self.host, "a host name or address, e.g. 127.0.0.1 or 0.0.0.0")


def register_configs() -> None:
    """Register every schema in Hydra's ConfigStore under ``schema/<group>``.

    The yaml files of a group extend their schema (``defaults: [/schema/agent/dqn@_here_]``);
    keeping the schemas in their own group keeps them out of the options Hydra lists.
    """
    from hydra.core.config_store import ConfigStore

    from rlrec.agents import AGENTS, agent_schema

    cs = ConfigStore.instance()
    cs.store(group="schema/env", name="env", node=EnvConfig)
    for name in AGENTS:
        cs.store(group="schema/agent", name=name, node=agent_schema(name))
    cs.store(group="schema/trainer", name="trainer", node=TrainerConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    cs.store(group="schema", name="evaluate", node=EvaluateConfig)
    cs.store(group="schema", name="serve", node=ServeConfig)
