"""Evaluate policies: ``python evaluate.py run_dir=<run>`` (simulator) or ``python evaluate.py env=obd`` (logs).

By default it replays a trained run and the baselines on the same simulated users
(rlrec/report.py). ``env=obd`` trains nothing: it estimates each policy's click rate from
the Open Bandit Dataset's logs with IPS, SNIPS, DM and DR (rlrec/logged_report.py).
Both write eval.json, eval.md and policies.png (into the run directory or ``out_dir``).
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlrec.cli import friendly_errors
from rlrec.config import ConfigError, register_configs

register_configs()  # the env presets extend the dataclass schemas registered here


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    with friendly_errors():
        env = cfg.get("env")
        if env is not None and env.get("logs") == "obd":
            from rlrec.logged_report import evaluate_logs, format_markdown

            report = evaluate_logs(path=env.logs_path, campaign=env.logs_campaign, n_boot=cfg.ope.n_boot,
                                   seed=cfg.ope.seed, out_dir=cfg.out_dir or HydraConfig.get().runtime.output_dir,
                                   run_dir=cfg.run_dir, checkpoint=cfg.checkpoint, device=cfg.device)
            print(format_markdown(report))
            return float(next(iter(report["policies"].values()))["ips"]["value"])
        if env is not None:
            raise ConfigError("evaluate.py takes env=obd (policies on logged data) or no env at all: a trained "
                              "run is evaluated in the shop it was trained on (its checkpoint holds the env config).")
        from rlrec.report import evaluate_run, format_markdown

        report = evaluate_run(run_dir=cfg.run_dir, checkpoint=cfg.checkpoint, eval_users=cfg.eval_users,
                              eval_seed=cfg.eval_seed, out_dir=cfg.out_dir, device=cfg.device,
                              baselines=tuple(cfg.baselines))
        print(format_markdown(report))
        first = next(iter(report["policies"].values()))
        return float(first["return"]["mean"])


if __name__ == "__main__":
    main()
