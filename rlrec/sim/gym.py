"""Gymnasium adapters: a vector env over the batched shop and a single-user env.

``import rlrec.sim.gym`` registers ``rlrec/Shop-v0``::

    env = gymnasium.make("rlrec/Shop-v0")                       # one user
    envs = gymnasium.make_vec("rlrec/Shop-v0", num_envs=256,    # B users, one batched shop
                              vectorization_mode="vector_entry_point")

Observations are dicts of integer arrays (the keys of :data:`rlrec.sim.env.Observation`);
the action is an item id (``Discrete(N)``) when the slate size is 1, else a slate
(``MultiDiscrete([N] * K)``). The vector env resets finished users in the same step
(``AutoresetMode.SAME_STEP``): the returned observation is the new user's first, and
``info["final_obs"]`` (masked by ``info["_final_obs"]``) holds the last one of the old.

The catalog is the same for every user, so it is not part of the per-user observation:

- item content (``env.content_dim`` > 0 or ``env.content_path``): ``info["item_content"]``
  from ``reset``, an [N, C] float32 array (also ``env.unwrapped.item_content``);
- new items (``env.holdout_items`` > 0): ``info["item_available"]``, an [N] bool array, from
  ``reset`` and every ``step`` (new items arrive with ``env.new_item_rate``); an action that
  shows an item not in the catalog is refused. ``open_catalog()`` puts every item in.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from rlrec.config import EnvConfig, env_preset
from rlrec.sim import response
from rlrec.sim.env import Observation, Shop

ENV_ID = "rlrec/Shop-v0"


def _config(env_cfg: Any, num_users: int, overrides: dict[str, Any]) -> EnvConfig:
    base = env_cfg if env_cfg is not None else env_preset("default")
    overrides = {"device": "cpu", **overrides, "num_users": num_users}
    from rlrec.config import env_config_from

    return env_config_from(base, **overrides)


def observation_space(cfg: EnvConfig) -> spaces.Dict:
    """The single-user observation space of a shop with config ``cfg``."""
    h = cfg.history_len
    fields: dict[str, spaces.Space] = {
        "user_features": spaces.MultiDiscrete([cfg.n_age_bands, cfg.n_genders, cfg.n_regions]),
        "history_items": spaces.MultiDiscrete([cfg.n_items + 1] * h),  # n_items pads
        "history_codes": spaces.MultiDiscrete([response.N_RESPONSE_CODES] * h),
        "step": spaces.Discrete(cfg.horizon + 1),  # horizon itself: the final observation of a full session
    }
    if cfg.observe_satisfaction:
        fields["satisfaction"] = spaces.Discrete(cfg.satisfaction_levels)
    return spaces.Dict(fields)


def action_space(cfg: EnvConfig) -> spaces.Space:
    """``Discrete(N)`` for one item per step, ``MultiDiscrete([N] * K)`` for a slate."""
    if cfg.slate_size == 1:
        return spaces.Discrete(cfg.n_items)
    return spaces.MultiDiscrete([cfg.n_items] * cfg.slate_size)


def _to_numpy(obs: Observation) -> dict[str, np.ndarray]:
    return {key: value.cpu().numpy().copy() for key, value in obs.items()}  # callers keep what they get


class _Catalog:
    """What both adapters expose of the shared catalog: content vectors and the items available now."""

    shop: Shop

    @property
    def item_content(self) -> np.ndarray | None:
        """[N, C] float32 content vectors, or None when the shop has none."""
        content = self.shop.item_content
        return None if content is None else content.cpu().numpy().astype(np.float32)

    @property
    def item_available(self) -> np.ndarray | None:
        """[N] bool: the items in the catalog now, or None when every item always is."""
        available = self.shop.item_available
        return None if available is None else available.cpu().numpy().copy()

    def open_catalog(self) -> None:
        """Put every item in the catalog, the held-out new ones too (what an evaluation does)."""
        self.shop.open_catalog()

    def _catalog_info(self, reset: bool) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if reset and self.shop.item_content is not None:
            info["item_content"] = self.item_content
        if self.shop.item_available is not None:
            info["item_available"] = self.item_available
        return info


class ShopVectorEnv(_Catalog, VectorEnv):
    """``num_envs`` users of one batched :class:`~rlrec.sim.env.Shop`, as a Gymnasium vector env.

    Args:
        num_envs: number of users served in parallel (the shop's ``num_users``).
        env_cfg: an env config (default: ``conf/env/default.yaml``).
        **overrides: ``EnvConfig`` fields to change (the device defaults to ``cpu``).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, env_cfg: Any = None, **overrides: Any) -> None:
        self.shop = Shop(_config(env_cfg, num_envs, overrides))
        cfg = self.shop.cfg
        self.num_envs = num_envs
        self.single_observation_space = observation_space(cfg)
        self.single_action_space = action_space(cfg)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._np_random, _ = gymnasium.utils.seeding.np_random(seed)
        return _to_numpy(self.shop.reset(seed=seed)), self._catalog_info(reset=True)

    def step(self, actions):
        slate = torch.as_tensor(np.asarray(actions), dtype=torch.long, device=self.shop.device)
        if slate.dim() == 1:
            slate = slate.unsqueeze(-1)
        obs, reward, done, info = self.shop.step(slate)
        done_np = done.cpu().numpy()
        infos = {
            "click": info["click"].cpu().numpy(),
            "purchase": info["purchase"].cpu().numpy(),
            "rating": info["rating"].cpu().numpy(),
            "final_obs": _to_numpy(info["final_obs"]),
            "_final_obs": done_np,
            **self._catalog_info(reset=False),
        }
        truncated = np.zeros_like(done_np)  # the step count is observed: the horizon is a true terminal
        return _to_numpy(obs), reward.cpu().numpy().astype(np.float64), done_np, truncated, infos


class ShopEnv(_Catalog, gymnasium.Env):
    """One user at a time: a single-user Gymnasium view of the shop.

    Args:
        env_cfg: an env config (default: ``conf/env/default.yaml``).
        **overrides: ``EnvConfig`` fields to change (the device defaults to ``cpu``).
    """

    metadata = {"render_modes": []}

    def __init__(self, env_cfg: Any = None, **overrides: Any) -> None:
        self.shop = Shop(_config(env_cfg, 1, overrides))
        self.observation_space = observation_space(self.shop.cfg)
        self.action_space = action_space(self.shop.cfg)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None and not hasattr(self, "_seeded"):
            seed = int(self.np_random.integers(2**31))  # derive from gymnasium's seeding
        self._seeded = True
        return self._single(self.shop.reset(seed=seed)), self._catalog_info(reset=True)

    def step(self, action):
        slate = torch.as_tensor(np.asarray(action), dtype=torch.long).reshape(1, -1)
        _, reward, done, info = self.shop.step(slate)
        # The shop has already put a fresh user in the row; a single env shows the end instead.
        obs = self._single(info["final_obs"])
        extra = {
            "click": bool(info["click"][0]),
            "purchase": bool(info["purchase"][0]),
            "rating": int(info["rating"][0]),
            **self._catalog_info(reset=False),
        }
        return obs, float(reward[0]), bool(done[0]), False, extra

    @staticmethod
    def _single(obs: Observation) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in obs.items():
            row = value[0].cpu().numpy().copy()
            out[key] = int(row) if row.ndim == 0 else row
        return out


if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="rlrec.sim.gym:ShopEnv", vector_entry_point="rlrec.sim.gym:ShopVectorEnv")
