"""Serve a trained policy over HTTP: ``python serve.py run_dir=<run>`` or ``python serve.py model=<export>``.

Composed by Hydra from conf/serve.yaml (schema: ``ServeConfig`` in rlrec/config.py); the
service itself is rlrec/serve/app.py. See README.md, "Deploy".
"""

import hydra
from omegaconf import DictConfig

from rlrec.cli import friendly_errors, run_entry_point
from rlrec.config import ServeConfig, build_config, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    with friendly_errors():
        settings = build_config(ServeConfig, cfg, "")
        from rlrec.serve.app import serve

        serve(settings)


if __name__ == "__main__":
    run_entry_point(main)
