"""Agents, all following :class:`rlrec.agents.base.Agent`, and the one registry of their names.

Adding an agent: its module here (a class with the shared constructor and a ``Config``
dataclass of hyperparameters), one line in :data:`AGENTS`, and ``conf/agent/<name>.yaml``.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass
from typing import Any

from rlrec.config import ConfigError

AGENTS: dict[str, str] = {
    "random": "rlrec.agents.baselines.RandomAgent",
    "popular": "rlrec.agents.baselines.PopularAgent",
    "bandit": "rlrec.agents.baselines.BanditAgent",
    "tabular_q": "rlrec.agents.tabular_q.TabularQAgent",
    "dqn": "rlrec.agents.dqn.DQNAgent",
    "reinforce": "rlrec.agents.pg.ReinforceAgent",
    "ppo": "rlrec.agents.pg.PPOAgent",
    "slateq": "rlrec.agents.slateq.SlateQAgent",
}
"""``agent=<name>`` on the command line -> the class. The names are the same everywhere
(configs, reports, benchmarks). Privileged yardsticks are not agents: see
:data:`rlrec.sim.privileged.YARDSTICKS`."""


def agent_class(name_or_target: str) -> type:
    """The agent class of a registry name (``"dqn"``) or a dotted path (``"rlrec.agents.dqn.DQNAgent"``)."""
    from hydra.utils import get_class

    target = AGENTS.get(name_or_target, name_or_target)
    if "." not in target:
        raise ConfigError(f"unknown agent {name_or_target!r}; choose from {sorted(AGENTS)}.")
    try:
        return get_class(target)
    except Exception as err:  # Hydra wraps the import error
        raise ConfigError(f"agent class {target!r} cannot be imported ({err}); choose from {sorted(AGENTS)}.") from err


def agent_name(cls_or_target: type | str) -> str:
    """The registry name of an agent class or dotted path (the path itself if unregistered)."""
    target = (
        cls_or_target if isinstance(cls_or_target, str) else f"{cls_or_target.__module__}.{cls_or_target.__qualname__}"
    )
    return next((name for name, path in AGENTS.items() if path == target), target)


def agent_schema(name: str) -> type:
    """The Hydra schema of ``agent=<name>``: the agent's ``Config`` dataclass plus its ``_target_``."""
    cls = agent_class(name)
    return make_dataclass(
        cls.Config.__qualname__, [("_target_", str, field(default=AGENTS[name]))], bases=(cls.Config,)
    )


def build_agent(agent_cfg: Any, spec: Any, *, seed: int, device: str = "auto") -> Any:
    """The one way agents are built from config: ``agent_cfg._target_`` instantiated by Hydra with the
    shop's ``spec``, ``seed``, ``device`` and the remaining keys as hyperparameters.

    The hyperparameters are checked before the agent is made (unknown keys, types, rules), so a
    bad value fails at start with one :class:`ConfigError` naming the field.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(agent_cfg, resolve=True) if isinstance(agent_cfg, DictConfig) else dict(agent_cfg)
    if "_target_" not in values:
        raise ConfigError(
            f"the agent config has no _target_: select an agent with agent=<name>, one of {sorted(AGENTS)}."
        )
    agent_class(values["_target_"])  # a clear error for a target that does not import
    try:
        return instantiate(values, spec, seed=seed, device=device)
    except InstantiationException as err:  # unwrap our own errors from Hydra's wrapper
        cause = err.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise
