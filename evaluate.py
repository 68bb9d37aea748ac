"""Evaluate policies: ``python evaluate.py run_dir=<run>`` (simulator), ``env=obd`` or ``env=served`` (logs).

By default it replays a trained run and the baselines on the same simulated users
(rlrec/eval/sim_report.py); ``shifts=[heldout_users,shift_mix,...]`` adds other customers and
shifted shops with the gap to the training shop (rlrec/eval/shifts.py).
``env=obd`` trains nothing: it estimates each policy's click rate
from the Open Bandit Dataset's logs with IPS, SNIPS, DM and DR (rlrec/eval/logged_report.py).
``env=served env.logs_path=<store>`` does the same from the decision log of rlrec's own
service (rlrec/eval/served_report.py). All write eval.json, eval.md and policies.png (into the
run directory or ``out_dir``).
"""

from datetime import datetime

import hydra
from omegaconf import DictConfig

from rlrec.cli import friendly_errors, run_entry_point
from rlrec.config import ConfigError, EvaluateConfig, build_config, env_config_from, register_configs, require

register_configs()


def evaluate_logged(env, ecfg: EvaluateConfig) -> float:
    """Off-policy estimates from logs (``env=obd`` or ``env=served``); returns the first policy's click-rate IPS."""
    out_dir = ecfg.out_dir or datetime.now().strftime("outputs/eval/%Y-%m-%d/%H-%M-%S")
    common = {"n_boot": ecfg.ope.n_boot, "seed": ecfg.ope.seed, "out_dir": out_dir}
    common.update(run_dir=ecfg.run_dir, checkpoint=ecfg.checkpoint, device=ecfg.device)
    if env.logs == "obd":
        from rlrec.eval.logged_report import evaluate_logs, format_markdown

        report = evaluate_logs(path=env.logs_path, campaign=env.logs_campaign, **common)
        click_ips = next(iter(report["policies"].values()))["ips"]
    else:
        from rlrec.eval.served_report import evaluate_served, format_markdown

        require(
            bool(env.logs_path),
            "env.logs_path",
            env.logs_path,
            "the service's store with env=served: its SQLite file (serve.py's store.path) or a SQLAlchemy URL",
        )
        report = evaluate_served(env.logs_path, **common)
        click_ips = next(iter(report["policies"].values()))["click"]["ips"]
    print(format_markdown(report))
    print(f"wrote {out_dir}/eval.json, eval.md, policies.png")
    return float(click_ips["value"])


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    with friendly_errors():
        ecfg = build_config(EvaluateConfig, cfg, "")
        env = env_config_from(cfg.env) if cfg.get("env") is not None else None
        if env is not None and env.logs in ("obd", "served"):
            if ecfg.shifts:
                raise ConfigError(
                    f"shifts = {list(ecfg.shifts)} applies to a run evaluated in the simulator, not to "
                    f"policies on logged data: drop env={env.logs} or shifts."
                )
            return evaluate_logged(env, ecfg)
        if env is not None:
            raise ConfigError(
                "evaluate.py takes env=obd or env=served (policies on logged data) or no env at all: a trained "
                "run is evaluated in the shop it was trained on (its checkpoint holds the env config)."
            )
        from rlrec.eval.sim_report import evaluate_run, format_markdown

        report = evaluate_run(
            run_dir=ecfg.run_dir,
            checkpoint=ecfg.checkpoint,
            eval_users=ecfg.eval_users,
            eval_seed=ecfg.eval_seed,
            out_dir=ecfg.out_dir,
            device=ecfg.device,
            baselines=tuple(ecfg.baselines),
            shifts=tuple(ecfg.shifts),
            heldout_user_seed=ecfg.heldout_user_seed,
        )
        print(format_markdown(report))
        first = next(iter(report["policies"].values()))
        return float(first["episodic_return"]["mean"])


if __name__ == "__main__":
    run_entry_point(main)
