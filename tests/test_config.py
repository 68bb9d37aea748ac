"""One home per default: every conf/ file builds its object with exactly the values its schema declares.

Each agent's hyperparameters are declared once, in its ``Config`` dataclass; each shop
field once, in ``EnvConfig``. The yaml files only select a schema and, for presets such as
``env=tiny``, override some fields. These tests compose every ``conf/agent`` and ``conf/env``
file through Hydra and build the object three ways (Hydra, the registry helper, plain
Python) so the homes can never drift apart again.
"""

from dataclasses import asdict

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rlrec.agents import AGENTS, agent_class, build_agent
from rlrec.agents.base import AgentSpec
from rlrec.config import CONF_DIR, EnvConfig, env_config_from, env_preset, register_configs
from rlrec.sim.env import Shop

AGENT_FILES = sorted(p.stem for p in (CONF_DIR / "agent").glob("*.yaml"))
ENV_FILES = sorted(p.stem for p in (CONF_DIR / "env").glob("*.yaml"))


@pytest.fixture(scope="module")
def composed():
    """``composed("agent", "dqn")``: the group option as Hydra composes it, alone."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda group, name: compose(overrides=[f"+{group}={name}"])[group]


def _own_values(group: str, name: str) -> dict:
    """The fields a yaml file (and the presets it extends) sets itself, beyond its schema."""
    data = yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text()) or {}
    values = {}
    for parent in data.pop("defaults", []):
        if isinstance(parent, str) and parent != "_self_" and not parent.startswith("/"):
            values.update(_own_values(group, parent))
    values.update(data)
    return values


def test_every_registered_agent_has_a_config_file_and_back():
    assert AGENT_FILES == sorted(AGENTS)


@pytest.mark.parametrize("name", AGENT_FILES)
def test_agent_config_files_hold_exactly_the_schema_defaults(composed, name, tiny_shop, small_shop):
    """conf/agent/<name>.yaml selects the schema and repeats nothing: Hydra, build_agent and the plain
    constructor give the agent the same hyperparameters, those the Config dataclass declares."""
    cls = agent_class(name)
    assert _own_values("agent", name) == {}, f"conf/agent/{name}.yaml sets values: they belong in {cls.Config}"
    declared = asdict(cls.Config())
    cfg = composed("agent", name)
    assert cfg._target_ == AGENTS[name]
    assert {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"} == declared
    shop = tiny_shop if name == "tabular_q" else small_shop
    spec = AgentSpec.from_shop(shop)
    assert build_agent(cfg, spec, seed=0, device="cpu").hyperparameters == declared
    assert cls(spec, device="cpu").hyperparameters == declared


@pytest.mark.parametrize("name", ENV_FILES)
def test_env_config_files_build_the_shop_with_the_declared_values(composed, name):
    """conf/env/<name>.yaml = EnvConfig's defaults + the preset's own overrides, whichever way it is read."""
    declared = EnvConfig(**_own_values("env", name))
    hydra_cfg = env_config_from(composed("env", name))
    assert hydra_cfg == declared
    assert env_preset(name) == declared
    if not declared.logs:  # a shop fitted to logs takes its sizes from the data (rlrec/sim/fitted.py)
        assert Shop(declared, device="cpu", num_users=8).cfg == EnvConfig(
            **{**asdict(declared), "device": "cpu", "num_users": 8}
        )


def test_env_preset_default_is_the_dataclass():
    assert env_preset("default") == EnvConfig()


def test_agents_refuse_unknown_and_invalid_hyperparameters(small_shop):
    from rlrec.config import ConfigError

    spec = AgentSpec.from_shop(small_shop)
    with pytest.raises(ConfigError, match=r"unknown agent field\(s\) \['lrr'\]; valid fields are: \[.*'lr'"):
        agent_class("dqn")(spec, lrr=0.1)
    with pytest.raises(ConfigError, match=r"agent.lr = inf is invalid: it must be a finite number"):
        agent_class("dqn")(spec, lr=float("inf"))
    with pytest.raises(ConfigError, match=r"agent.epsilon = 2.0 is invalid: it must be a probability in \[0, 1\]"):
        agent_class("popular")(spec, epsilon=2.0)
    with pytest.raises(ConfigError, match="this agent needs the satisfaction observed"):
        agent_class("tabular_q")(spec)
