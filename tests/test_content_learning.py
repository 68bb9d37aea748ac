"""Learning with item content: on items it has never seen, an agent with content beats one without, and
the advantage is gone when the content is noise (so no hidden truth leaks into what the agent sees).

The DQN trains on a shop whose catalog holds 20% new items out of training, with content vectors at
the default informativeness (``env.content_noise``), without content (``env.content_dim=0``: the same
catalog, new items and users, since content has a generator of its own), or with content that is noise
(``env.content_noise=100``). Each trained policy is then judged on a catalog of the new items alone
(``Shop.open_catalog(new_only=True)``), where every slate shows items it never saw in training: its
session return and the clicks per new item shown (``new_item_ctr``), pooled over seeds.

The shop is the default one at a smaller training budget, with hype independent of quality
(``hype_quality_corr=0``). In the default shop, hyped items are the poor ones, so a policy that knows an
item's quality also knows which items are clickbait; a DQN trained for seconds is still partly
myopic and uses that knowledge for clicks (its purchases rise and its ratings fall), which is the
myopic trap the default shop is built to set, not a property of content. The benchmark
(benchmarks/generalization.py, README) measures the default shop itself with full training.
"""

import pytest

from rlrec.agents.base import AgentSpec
from rlrec.agents.dqn import DQNAgent
from rlrec.config import env_preset
from rlrec.eval.rollout import SessionStats, run_sessions
from rlrec.sim.env import Shop
from rlrec.train.loop import train_steps

SEEDS = (0, 1, 2)
SHOP = dict(device="cpu", num_users=128, content_dim=32, holdout_items=0.2, hype_quality_corr=0.0)
AGENT = dict(
    device="cpu",
    embed_dim=16,
    hidden_dim=32,
    batch_size=256,
    learning_starts=2000,
    exploration_steps=80_000,
    id_dropout=0.5,  # trains the network to score items whose id it does not know
)
STEPS, EVAL_USERS = 1000, 2048
ARMS = {"content": {}, "id_only": {"content_dim": 0}, "noisy_content": {"content_noise": 100.0}}


@pytest.fixture(scope="module")
def new_item_results():
    """{arm: summary of the new-items-only catalog, sessions of every seed pooled}."""
    out = {}
    for arm, change in ARMS.items():
        env = env_preset("default", **{**SHOP, **change})
        stats = []
        for seed in SEEDS:
            shop = Shop(env)
            shop.reset(seed=seed)
            agent = DQNAgent(AgentSpec.from_shop(shop), seed=seed, **AGENT)
            train_steps(shop, agent, STEPS)
            new_only = Shop(env, num_users=EVAL_USERS).open_catalog(new_only=True)
            stats.append(run_sessions(new_only, agent, seed=10_000))
        out[arm] = SessionStats.concat(stats).summary()
    return out


def _low(stat):
    return stat["mean"] - stat["ci95"]


def _high(stat):
    return stat["mean"] + stat["ci95"]


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["new_item_ctr", "episodic_return"])
def test_content_beats_ids_on_items_never_seen(new_item_results, metric):
    content, id_only = new_item_results["content"][metric], new_item_results["id_only"][metric]
    assert _low(content) > _high(id_only), (metric, content, id_only)


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["new_item_ctr", "episodic_return"])
def test_the_advantage_vanishes_when_content_is_noise(new_item_results, metric):
    """Noise content is no better than none (a leak of the hidden truth would keep the advantage)."""
    noisy, id_only = new_item_results["noisy_content"][metric], new_item_results["id_only"][metric]
    assert _low(noisy) <= _high(id_only), (metric, noisy, id_only)
