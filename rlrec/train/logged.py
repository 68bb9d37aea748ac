"""Off-policy training from logged data: ``python train.py agent=reinforce trainer.logged_data=obd|served``.

The one entry for learning from logs instead of the shop. Each "environment step" of the
trainer becomes one gradient step on ``logged_batch_size`` logged rows drawn (with replacement,
from the agent's generator, so a resumed run repeats the straight one) by
:meth:`rlrec.agents.pg.ReinforceAgent.learn_logged`. Checkpoints, resume, TensorBoard
(``losses/*``) and the final evaluation in the shop work as in on-policy training.

Where the data come from (the fields evaluate.py reads for ``env=obd`` / ``env=served``):

- ``trainer.logged_data=obd`` with ``env=obd``: the pooled random and BTS logs of
  ``env.logs_campaign`` under ``env.logs_path`` (the shipped sample when null), the logs the
  ``env=obd`` shop was fitted to, with their user codes as that shop observes them. Each row is one
  shown item (a slot of a 3-item slate); reward = click; propensity = the logged
  P(item at this slot). The observation is a fresh session's (the logs have no history).
- ``trainer.logged_data=served env.logs_path=<store>`` with the shop the service ran (e.g.
  ``env=default``): every shown position of rlrec's own decision log (:mod:`rlrec.data.served`),
  with the full observation the serving model saw; reward = click; propensity = the service's exact
  probability of the item at that position.

beta (the behaviour probability in the importance weight) is the logged propensity with
``agent.behaviour=logged`` (the default), or the agent's behaviour head with ``agent.behaviour=learned``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rlrec.config import ConfigError, EnvConfig
from rlrec.sim.env import Shop


def logged_rows(kind: str, env_cfg: EnvConfig, shop: Shop) -> dict[str, Any]:
    """The logged rows for ``trainer.logged_data=kind``, on ``shop``'s device: ``obs`` (a dict of [n, ...]),
    ``item`` [n], ``reward`` [n] float, ``propensity`` [n] float64."""
    if kind == "obd":
        if env_cfg.logs != "obd":
            raise ConfigError(
                "trainer.logged_data=obd trains from the Open Bandit logs the env=obd shop is fitted to: "
                "add env=obd (its env.logs_path and env.logs_campaign say which logs)."
            )
        from rlrec.sim.fitted import obd_logs

        logs = obd_logs(shop.cfg)
        # A separate shop of one row per logged impression draws the fresh sessions' observations,
        # leaving the training shop's random state alone.
        obs = Shop(shop.cfg, num_users=len(logs)).first_observation(logs.user_features)
        rows = {"obs": obs, "item": logs.action, "reward": logs.click.float(), "propensity": logs.propensity}
    elif kind == "served":
        if env_cfg.logs != "" or not env_cfg.logs_path:
            raise ConfigError(
                "trainer.logged_data=served reads the service's decision log at env.logs_path with the shop the "
                f"service ran (env.logs = {env_cfg.logs!r}, env.logs_path = {env_cfg.logs_path!r}): e.g. "
                "env=default env.logs_path=served.db."
            )
        from rlrec.data.served import load_served

        data = load_served(env_cfg.logs_path)
        if data.n_items != shop.cfg.n_items:
            raise ConfigError(
                f"the store {env_cfg.logs_path} logs a catalog of {data.n_items} items and the shop has "
                f"env.n_items = {shop.cfg.n_items}: train with the env config the service ran."
            )
        rows = {
            "obs": data.observation(slice(None), shop.cfg.history_len),
            "item": data.action,
            "reward": data.click.float(),
            "propensity": data.propensity,
        }
    else:
        raise ConfigError(f"trainer.logged_data = {kind!r}: choose obd or served (or leave it empty: the shop).")
    if len(rows["item"]) == 0:
        raise ConfigError(f"the {kind} logs hold no rows to train on.")
    device = shop.device
    return {
        k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
        for k, v in rows.items()
    }


def check_logged_agent(agent: Any) -> None:
    """Refuse an agent that cannot learn from logs, with the fix."""
    if not hasattr(agent, "learn_logged"):
        raise ConfigError(
            f"trainer.logged_data trains agents that learn off-policy from logs (agent=reinforce); this agent "
            f"is a {type(agent).__name__}: use agent=reinforce or leave trainer.logged_data empty."
        )


def train_logged_steps(
    agent: Any,
    rows: dict[str, Any],
    steps: int,
    on_step: Callable[[int, dict[str, torch.Tensor], Any], None] | None = None,
    start: int = 0,
) -> None:
    """Gradient steps ``start .. steps - 1`` on minibatches of logged ``rows`` (see :func:`logged_rows`)."""
    from rlrec.agents.pg import take

    n = rows["item"].shape[0]
    for step in range(start, steps):
        index = torch.randint(n, (agent.hp.logged_batch_size,), generator=agent.generator, device=agent.device)
        metrics = agent.learn_logged(take(rows, index))
        if on_step is not None:
            on_step(step, metrics, None)
