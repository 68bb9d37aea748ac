"""Evaluation on logged data: ``python evaluate.py env=obd`` calls :func:`evaluate_logs`.

Nothing is trained or simulated. Each policy's click rate is estimated from the Open
Bandit Dataset's uniform-random logs with every estimator of :mod:`rlrec.ope` (IPS,
SNIPS, DM, DR) and its bootstrap 95% interval. The reward model of DM and DR is a click
model fitted on the *other* behaviour's logs (BTS), so it never saw the evaluation rows.
Policies give their item probabilities through ``action_probs``, as agents do:

- ``random`` (:class:`~rlrec.agents.baselines.RandomAgent`): its IPS value equals
  the random logs' own click rate, a built-in check;
- ``popular`` (:class:`~rlrec.agents.baselines.PopularAgent`): the item clicked most often
  in the BTS logs;
- ``click_model_greedy``: the best item per context under the fitted model (the myopic
  policy learnt from logs; its DM value is optimistic by construction, IPS is the fair
  one);
- ``bts_behaviour``: its probabilities are logged only for the items it showed, so its
  value is measured on-policy, from its own logs (estimator ``on_policy``);
- with ``run_dir``/``checkpoint``, the trained agent of a run on the fitted shop
  (``python train.py env=obd``): each logged impression is the first step of a session of
  a user with the logged features, and the agent's ``action_probs`` give the item of its
  slate in the logged position.

Writes ``eval.json``, ``eval.md`` and ``policies.png`` like the simulated evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlrec.agents.baselines import PopularAgent, RandomAgent
from rlrec.config import ConfigError
from rlrec.data.click_model import ClickModelPolicy, fit_click_model, pool_logs
from rlrec.data.obd import load_obd
from rlrec.eval.ope import ESTIMATORS, bootstrap_mean, off_policy_estimates
from rlrec.eval.output import estimates_chart, markdown_table, write_report
from rlrec.sim.fitted import obd_logs
from rlrec.train.run import LoadedRun, load_run, resolve_checkpoint


def evaluate_logs(
    path: str | None = None,
    campaign: str = "men",
    n_boot: int = 1000,
    seed: int = 0,
    out_dir: str | Path = ".",
    run_dir: str | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Estimate the click rate of each policy on the random logs of ``campaign``; write the report."""
    trained = _load_trained(run_dir, checkpoint, device, path, campaign) if (run_dir or checkpoint) else None
    random_logs = load_obd(path, policy="random", campaign=campaign)
    bts_logs = load_obd(path, policy="bts", campaign=campaign)
    pooled = pool_logs(random_logs, bts_logs)  # one user-feature vocabulary for both logs
    n = len(random_logs)
    evaluation_rows, bts_rows = torch.arange(n), torch.arange(n, len(pooled))
    model = fit_click_model(pooled, bts_rows, seed=seed)
    contexts = {
        "user_features": pooled.user_features[evaluation_rows],
        "position": random_logs.position,
        "affinity": random_logs.affinity,
    }
    reward_model = torch.sigmoid(model.item_logits(**contexts))

    spec = pooled.agent_spec()
    popular = PopularAgent(spec, device="cpu", seed=seed)
    popular.observe({"action": bts_logs.action, "purchase": bts_logs.click})  # clicks stand in for purchases
    policies = {
        "random": RandomAgent(spec, device="cpu", seed=seed),
        "popular": popular,
        "click_model_greedy": ClickModelPolicy(model),
    }
    probs = {label: policy.action_probs(contexts) for label, policy in policies.items()}
    if trained is not None:
        shop = trained.shop
        shop_users = obd_logs(shop.cfg).user_features[evaluation_rows]  # the same pooled codes the shop observes
        slot = random_logs.position  # position-aware: the item the agent shows where the logged one was shown
        probs = {trained.label: trained.agent.action_probs(shop.first_observation(shop_users), slot).cpu(), **probs}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for label, policy_probs in probs.items():
        estimates = off_policy_estimates(
            random_logs.click,
            random_logs.action,
            random_logs.propensity,
            policy_probs,
            reward_model=reward_model,
            n_boot=n_boot,
            seed=seed,
        )
        results[label] = {name: e.as_dict() for name, e in estimates.items()}
    results["bts_behaviour"] = {"on_policy": bootstrap_mean(bts_logs.click, "on_policy", n_boot, seed).as_dict()}

    report = {
        "kind": "logged",
        "dataset": str(path or "the sample shipped with rlrec"),
        "campaign": campaign,
        "evaluation_logs": {
            "policy": "random",
            "rows": n,
            "clicks": int(random_logs.click.sum()),
            "click_rate": float(random_logs.click.double().mean()),
        },
        "reward_model": {"fitted_on": f"bts/{campaign}", "rows": len(bts_logs), "l2": model.l2},
        "policies": results,
    }
    out = Path(out_dir)
    write_report(out, report, format_markdown(report))
    _plot(report, out / "policies.png")
    return report


def _load_trained(
    run_dir: str | None, checkpoint: str | None, device: str | None, path: str | None, campaign: str
) -> LoadedRun:
    """The run trained on the shop fitted to these logs; a clear error otherwise."""
    run = load_run(resolve_checkpoint(run_dir, checkpoint), num_users=1, **({"device": device} if device else {}))
    env_cfg = run.shop.cfg
    if env_cfg.logs != "obd" or env_cfg.logs_campaign != campaign or (env_cfg.logs_path or None) != (path or None):
        raise ConfigError(
            f"the run was trained on env logs={env_cfg.logs!r}, campaign {env_cfg.logs_campaign!r}, "
            f"path {env_cfg.logs_path!r}; evaluating it on the {campaign!r} logs at {path!r} needs a "
            "run trained on the shop fitted to them: python train.py env=obd "
            f"env.logs_campaign={campaign}" + (f" env.logs_path={path}" if path else "") + "."
        )
    return run


def format_markdown(report: dict[str, Any]) -> str:
    logs = report["evaluation_logs"]
    names = ESTIMATORS + ("on_policy",)
    rows = [
        [label]
        + [
            f"{e['value']:.5f} [{e['ci_low']:.5f}, {e['ci_high']:.5f}]" if (e := estimates.get(name)) else "-"
            for name in names
        ]
        for label, estimates in report["policies"].items()
    ]
    lines = [
        f"# Click rate from logs: Open Bandit Dataset, campaign {report['campaign']}",
        "",
        f"Evaluation logs: uniform-random behaviour, {logs['rows']} impressions, {logs['clicks']} clicks "
        f"(on-policy click rate {logs['click_rate']:.5f}). DM/DR reward model fitted on "
        f"{report['reward_model']['fitted_on']}. Estimate [bootstrap 95% interval].",
        "",
        markdown_table(["policy", *names], rows),
    ]
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    policies = report["policies"]
    estimates = {name: {p: est.get(name) for p, est in policies.items()} for name in ESTIMATORS + ("on_policy",)}
    estimates_chart(path, estimates, "click rate (95% CI)", f"Policies on the {report['campaign']} logs")
