import os

import pytest
import torch

from rlrec.config import env_preset
from rlrec.sim.env import Shop


def _share_the_cores_between_workers() -> None:
    """pytest-xdist (``-n auto`` in pyproject.toml) runs one worker per core: each worker and the
    train.py processes its tests start get their share of the cores, not all of them each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores_between_workers()

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))
DEVICES = ["cpu", CUDA]


def solved_shop(preset, num_users, **overrides):
    """(shop, exact MDP, Q*, V*) of an enumerable preset (``tiny``, ``medium``) with ``num_users`` rows,
    e.g. ``solved_shop("tiny", 8, slate_size=2)``."""
    from rlrec.sim.tabular import build_tabular_mdp, value_iteration

    shop = Shop(env_preset(preset, device="cpu", num_users=num_users, **overrides))
    mdp = build_tabular_mdp(shop)
    q, v = value_iteration(mdp)
    return shop, mdp, q, v


def solved_tiny_shop(num_users):
    """(shop, exact MDP, Q*, V*) of the tiny shop with ``num_users`` rows."""
    return solved_shop("tiny", num_users)


@pytest.fixture
def tiny_shop():
    return Shop(env_preset("tiny", device="cpu", num_users=256))


@pytest.fixture
def small_shop():
    return Shop(env_preset("default", device="cpu", num_users=64, n_items=200))
