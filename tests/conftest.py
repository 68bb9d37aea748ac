import pytest
import torch

from rlrec.config import env_preset
from rlrec.sim.env import Shop

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))
DEVICES = ["cpu", CUDA]


def solved_tiny_shop(num_users):
    """(shop, exact MDP, Q*, V*) of the tiny shop with ``num_users`` rows."""
    from rlrec.sim.tabular import build_tabular_mdp, value_iteration

    shop = Shop(env_preset("tiny", device="cpu", num_users=num_users))
    mdp = build_tabular_mdp(shop)
    q, v = value_iteration(mdp)
    return shop, mdp, q, v


@pytest.fixture
def tiny_shop():
    return Shop(env_preset("tiny", device="cpu", num_users=256))


@pytest.fixture
def small_shop():
    return Shop(env_preset("default", device="cpu", num_users=64, n_items=200))
