"""Evaluate a trained run against the baselines: ``python evaluate.py run_dir=<run>``.

Writes eval.json, eval.md, learning_curve.png and policies.png into the run directory
(or ``out_dir``). See rlrec/report.py.
"""

import hydra
from omegaconf import DictConfig

from rlrec.cli import friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    from rlrec.report import evaluate_run, format_markdown

    with friendly_errors():
        report = evaluate_run(run_dir=cfg.run_dir, checkpoint=cfg.checkpoint, eval_users=cfg.eval_users,
                              eval_seed=cfg.eval_seed, out_dir=cfg.out_dir, device=cfg.device,
                              baselines=tuple(cfg.baselines))
    print(format_markdown(report))
    first = next(iter(report["policies"].values()))
    return float(first["return"]["mean"])


if __name__ == "__main__":
    main()
