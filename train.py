"""Train an agent on the shop: ``python train.py [env=...] [agent=...] [key=value ...]``.

Composed by Hydra from conf/train.yaml; see README.md. Returns the final evaluation's mean
session return, so ``-m`` sweeps (Optuna included) can optimise it.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlrec.cli import friendly_errors, run_entry_point
from rlrec.config import register_configs
from rlrec.train.distributed import quiet_rank_overrides

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from rlrec.train.loop import train

    with friendly_errors():
        return train(cfg, run_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    sys.argv += quiet_rank_overrides(sys.argv[1:])  # torchrun's ranks other than 0 write nothing
    run_entry_point(main)
