import pytest
import torch

from rlrec.config import env_preset
from rlrec.sim.env import Shop

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))
DEVICES = ["cpu", CUDA]


@pytest.fixture
def tiny_shop():
    return Shop(env_preset("tiny", device="cpu", num_users=256))


@pytest.fixture
def small_shop():
    return Shop(env_preset("default", device="cpu", num_users=64, n_items=200))
