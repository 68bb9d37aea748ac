"""The shops a trained policy is judged in besides its own: held-out users and shifted shops.

A policy that learned one shop may have memorised it. These shops keep the catalog the policy
was trained on (the same items, features and content; :func:`shop_config` refuses a shift that
changes them) and change what the policy cannot have memorised:

- ``heldout_users``: another population of customers (the user model, which maps features to
  preferences and price sensitivity, drawn from another seed: ``env.user_seed``);
- ``shift_<name>``: the run's shop with the fields of ``conf/env/shift_<name>.yaml`` changed
  (only the fields that file sets itself; as a preset, ``env=shift_<name>`` is the default shop
  with them). ``shift_mix`` changes the customers' mix, ``shift_price`` their price
  sensitivity, ``shift_hype`` how much attractive poor items pull.

``evaluate.py shifts=[heldout_users,shift_mix,...]`` reports each beside the training shop
with the gap; ``trainer.val_shop`` picks the shop training validates on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from rlrec.config import CONF_DIR, ConfigError, EnvConfig, env_config_from

HELDOUT_USERS = "heldout_users"
TRAIN = "train"
SHIFT_PREFIX = "shift_"


def shift_names() -> list[str]:
    """The shifted shops: every ``conf/env/shift_*.yaml``, by name."""
    return sorted(p.stem for p in (CONF_DIR / "env").glob(f"{SHIFT_PREFIX}*.yaml"))


def check_shop_names(names: Any, field_name: str, allow_train: bool = False) -> None:
    """Raise :class:`ConfigError` naming ``field_name`` unless every name is a known evaluation shop."""
    names = [names] if isinstance(names, str) else list(names)
    valid = ([TRAIN] if allow_train else []) + [HELDOUT_USERS] + shift_names()
    unknown = [name for name in names if name not in valid]
    if unknown:
        shown = names[0] if len(names) == 1 and allow_train else names
        raise ConfigError(
            f"{field_name} = {shown!r} names unknown shop(s) {unknown}; choose from {valid} "
            f"(a shifted shop is a file conf/env/{SHIFT_PREFIX}<name>.yaml)."
        )


def shift_overrides(name: str) -> dict[str, Any]:
    """The fields ``conf/env/<name>.yaml`` sets itself (not those of the presets it extends)."""
    data = yaml.safe_load((CONF_DIR / "env" / f"{name}.yaml").read_text()) or {}
    data.pop("defaults", None)
    return data


def shop_config(env_cfg: EnvConfig, name: str, heldout_user_seed: int) -> EnvConfig:
    """The env config of evaluation shop ``name`` for a run trained in ``env_cfg``.

    ``"train"``: the run's own; ``"heldout_users"``: its users drawn from ``heldout_user_seed``;
    ``"shift_<name>"``: the fields of ``conf/env/shift_<name>.yaml`` changed.
    """
    check_shop_names([name], "shop", allow_train=True)
    if name == TRAIN:
        return env_cfg
    if name == HELDOUT_USERS:
        if env_cfg.user_seed == heldout_user_seed:
            raise ConfigError(
                f"the held-out users (user seed {heldout_user_seed}) are the run's own (env.user_seed = "
                f"{env_cfg.user_seed}): choose another held-out user seed."
            )
        return dataclasses.replace(env_cfg, user_seed=heldout_user_seed)
    return env_config_from(env_cfg, **shift_overrides(name))


def check_same_catalog(train_fingerprint: str, shop: Any, name: str) -> None:
    """Refuse a shifted ``shop`` whose items differ from the training shop's (``train_fingerprint``)."""
    from rlrec.train.run import catalog_fingerprint

    if catalog_fingerprint(shop) != train_fingerprint:
        changed = sorted(shift_overrides(name)) if name.startswith(SHIFT_PREFIX) else []
        raise ConfigError(
            f"shop {name!r} changes the catalog the policy was trained on (it sets {changed}): a shift may "
            "change the customers and how they respond, not the items, their features or their content. "
            f"Edit conf/env/{name}.yaml."
        )
