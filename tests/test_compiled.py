"""The launch-free training step (trainer.compile=true): the same algorithm as the eager loop, compiled."""

from pathlib import Path

import pytest
import torch
from conftest import DEVICES
from test_workflow import FAST, run

from rlrec.agents.base import AgentSpec
from rlrec.agents.dqn import DQNAgent
from rlrec.agents.tabular_q import TabularQAgent
from rlrec.config import ConfigError, env_preset
from rlrec.sim import response
from rlrec.sim.env import Shop
from rlrec.train.compiled import TrainStep
from rlrec.train.loop import EpisodeTracker, train_steps
from rlrec.train.run import load_checkpoint

B = 32
AGENT = {
    "learning_starts": 64,  # learning from the second step on
    "batch_size": 32,
    "buffer_size": 4096,
    "embed_dim": 8,
    "hidden_dim": 16,
    "exploration_steps": 20 * B,  # epsilon from 1 to 0.05 within the runs below
    "target_update_interval": 5,
}
NO_ENDS = {"leave_prob_unhappy": 0.0, "leave_prob_happy": 0.0, "horizon": 1000}  # sessions never end


def make(device, agent=None, **env):
    shop = Shop(env_preset("default", device=device, n_items=60, num_users=B, **env))
    shop.reset(seed=3)
    return shop, DQNAgent(AgentSpec.from_shop(shop), seed=3, device=device, **{**AGENT, **(agent or {})})


def tensors(shop, agent, tracker):
    """Everything a step changes, by name."""
    out = {f"shop.{k}": v for k, v in vars(shop.state).items()}
    out.update({f"replay.{k}": v for k, v in agent.buffer.storage.items()})
    out.update({f"q.{k}": v for k, v in agent.q.state_dict().items()})
    out.update({f"q_target.{k}": v for k, v in agent.q_target.state_dict().items()})
    for i, param in enumerate(agent.q.parameters()):
        out.update({f"adam.{i}.{k}": v for k, v in agent.optimizer.state[param].items()})
    out.update({f"tracker.{k}": v for k, v in vars(tracker).items()})
    return out


def assert_same(a, b, exact, rtol=1e-5, atol=1e-6, what=""):
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key].to(a[key].device)
        if exact or not x.is_floating_point():
            assert torch.equal(x, y), f"{what}{key} differs"
        else:
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, key=key: f"{what}{key}: {m}")


def test_sync_free_shop_step_resets_finished_rows_from_its_draws(small_shop):
    """``Shop.step_from`` is ``Shop.step`` with the random numbers given: the same responses and the same
    next state for rows that go on; a finished row restarts as the fresh user drawn for it."""
    shop = small_shop
    shop.reset(seed=1)
    for _ in range(5):  # some sessions under way
        shop.step(shop.random_slate())
    slate = shop.random_slate()
    state, gen = shop.state, shop.generator.get_state()
    draws = shop.draw_step()
    after_draws = shop.generator.get_state()
    next_state, result = shop.step_from(state, slate, draws)
    assert shop.state is state and torch.equal(shop.generator.get_state(), after_draws)  # pure
    shop.generator.set_state(gen)
    expected = shop.step(slate)  # draws the same uniforms first, then users for finished rows only
    done = expected.done
    assert 0 < int(done.sum()) < shop.num_users
    assert torch.equal(result.done, done) and torch.equal(result.reward, expected.reward)
    for key in ("click", "purchase", "rating", "choice", "item"):
        assert torch.equal(result.info[key], expected.info[key]), key
    for key in expected.info["final_obs"]:
        assert torch.equal(result.info["final_obs"][key], expected.info["final_obs"][key]), key
    for key, value in vars(shop.state).items():
        assert torch.equal(getattr(next_state, key)[~done], value[~done]), key
    fresh = shop.users.features_from(draws.users.feature_uniforms)
    assert torch.equal(next_state.user_features[done], fresh[done])
    assert (next_state.step[done] == 0).all()
    assert (next_state.satisfaction[done] == shop.cfg.initial_satisfaction).all()
    assert (next_state.history_codes[done] == response.PAD).all()
    assert (next_state.history_items[done] == shop.n_items).all()
    assert torch.equal(result.obs["step"], next_state.step)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "hp",
    [
        {},
        {"n_step": 3, "tau": 0.5, "double_dqn": False, "loss": "mse", "updates_per_step": 2, "learning_starts": 3 * B}
        | {"buffer_size": 16 * B},  # the replay wraps around,
    ],
    ids=["default", "nstep_polyak"],
)
def test_sync_free_step_is_the_eager_loop(device, hp):
    """Run eagerly, ``TrainStep`` takes the eager loop's steps: the same slates, transitions, replay
    samples, updates, target copies, counters and metrics, bit for bit on CPU.

    Sessions never end here, so the fresh users (the one thing the sync-free step draws
    differently) are never used; the shop's generator is aligned before each step, since the
    sync-free step draws a fresh user for every row and the eager loop for none.
    """
    ref_shop, ref = make(device, hp, **NO_ENDS)
    shop, agent = make(device, hp, **NO_ENDS)
    ref_tracker, tracker = EpisodeTracker(B, ref_shop.device), EpisodeTracker(B, shop.device)
    step = TrainStep(shop, agent, tracker, compile=False)
    exact = device == "cpu"  # CUDA's atomics (embedding backward) sum in any order
    seen = {}

    def on_step(_, metrics, result):
        ref_tracker.add(result)
        seen["metrics"] = metrics

    for i in range(30):
        ref_shop.generator.set_state(shop.generator.get_state())
        train_steps(ref_shop, ref, i + 1, on_step=on_step, start=i)
        metrics = step()
        assert_same(tensors(ref_shop, ref, ref_tracker), tensors(shop, agent, tracker), exact, what=f"step {i}: ")
        assert (ref.transitions_seen, ref.updates, ref.buffer.added) == (
            agent.transitions_seen,
            agent.updates,
            agent.buffer.added,
        )
        assert (int(step.seen), int(step.updates), int(step.added)) == (
            agent.transitions_seen,
            agent.updates,
            agent.buffer.added,
        )
        assert metrics.keys() == seen["metrics"].keys()
        assert_same(seen["metrics"], metrics, exact, what=f"step {i}: ")
        if not exact:  # re-align, so that a last-bit difference cannot flip a near-tie some steps later
            reference = tensors(ref_shop, ref, ref_tracker)
            with torch.no_grad():
                for key, value in tensors(shop, agent, tracker).items():
                    value.copy_(reference[key])
    assert agent.updates == (29 if not hp else 28 * 2)
    assert torch.equal(ref.generator.get_state(), agent.generator.get_state())
    assert torch.equal(ref.buffer.generator.get_state(), agent.buffer.generator.get_state())
    assert ref_tracker.flush() == tracker.flush()


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_step_agrees_with_the_eager_one(device):
    """Compiled and eager ``TrainStep``, from the same state, take the same step: the same slates,
    responses, transitions and metrics counts exactly, and parameters, optimizer state and loss within
    float rounding (rtol 1e-5, atol 1e-6).

    Inductor fuses the loss, the normalisation of interests and Adam's arithmetic into kernels whose
    sums and multiply-adds round differently (1 ulp here and there). Two RL runs that differ by one ulp
    part ways once a near-tie in a top-K flips, so the compiled step is re-aligned to the eager one
    after each comparison and all 30 steps (exploration from 1 to greedy, learning from the second
    step, target copies every 5 updates, sessions ending and restarting) are checked one by one.
    """
    e_shop, e_agent = make(device)
    c_shop, c_agent = make(device)
    e_tracker, c_tracker = EpisodeTracker(B, e_shop.device), EpisodeTracker(B, c_shop.device)
    eager = TrainStep(e_shop, e_agent, e_tracker, compile=False)
    compiled = TrainStep(c_shop, c_agent, c_tracker, compile=True)
    exact = device == "cpu"
    for i in range(30):
        e_metrics, c_metrics = eager(), compiled()
        e_state, c_state = tensors(e_shop, e_agent, e_tracker), tensors(c_shop, c_agent, c_tracker)
        discrete = [k for k, v in e_state.items() if k.startswith("replay.") or not v.is_floating_point()]
        assert_same({k: e_state[k] for k in discrete}, {k: c_state[k] for k in discrete}, exact, what=f"step {i}: ")
        assert_same(e_state, c_state, exact=False, what=f"step {i}: ")
        assert_same(e_metrics, c_metrics, exact=False, rtol=1e-4, what=f"step {i}: ")
        with torch.no_grad():  # re-align: the next step starts from the same state again
            for key, value in e_state.items():
                c_state[key].copy_(value)
    assert int(e_tracker.sums[0]) > 10  # sessions ended (and restarted as fresh users)
    assert c_agent.updates == 29 and int(compiled.updates) == 29


def test_the_trainer_leaves_agent_slates_unchecked_and_user_slates_checked(small_shop, monkeypatch):
    """``env.check_actions`` costs a host sync per step: the trainers skip it for their agent's slates."""
    agent = DQNAgent(AgentSpec.from_shop(small_shop), seed=0, device="cpu", **AGENT)
    checks = []
    check_slate = Shop._check_slate
    monkeypatch.setattr(
        Shop, "_check_slate", lambda self, slate, ids: checks.append(ids) or check_slate(self, slate, ids)
    )
    train_steps(small_shop, agent, 3)
    assert checks == [False, False, False]
    slate = small_shop.random_slate()
    slate[0, 0] = small_shop.n_items
    with pytest.raises(ValueError, match="out of range"):
        small_shop.step(slate)
    assert checks[-1] is True


def test_a_checkpoint_of_a_cuda_graph_run_trains_on_cpu(small_shop):
    """Adam steps with CUDA graphs in its capturable form, which cannot step on the CPU: loading turns it off."""
    spec = AgentSpec.from_shop(small_shop)
    agent = DQNAgent(spec, seed=0, device="cpu", **AGENT)
    agent.optimizer.param_groups[0]["capturable"] = True  # as a compiled CUDA run saves it
    restored = DQNAgent(spec, seed=0, device="cpu", **AGENT)
    restored.load_state_dict(agent.state_dict())
    assert restored.optimizer.param_groups[0]["capturable"] is False
    train_steps(small_shop, restored, 3)
    assert restored.updates > 0


def test_compiled_step_needs_a_dqn(tiny_shop):
    agent = TabularQAgent(AgentSpec.from_shop(tiny_shop), seed=0, device="cpu")
    with pytest.raises(ConfigError, match="trainer.compile = true runs the DQN's training step"):
        TrainStep(tiny_shop, agent)


def _params(run_dir):
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    return torch.cat([v.flatten().float() for v in state["agent"]["q"].values()])


def test_compiled_run_checkpoints_and_resumes_exactly(tmp_path):
    """``train.py trainer.compile=true`` stopped at step 20 and resumed to 40 ends where 40 straight steps end."""
    args = [*FAST[:-5], "trainer.log_every=10", "trainer.checkpoint_every=10", "trainer.eval_users=16"]
    args += ["trainer.progress=false", "trainer.compile=true"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run("train.py", *args, "trainer.env_steps=40", f"hydra.run.dir={straight}", cwd=tmp_path)
    run("train.py", *args, "trainer.env_steps=20", f"hydra.run.dir={resumed}", cwd=tmp_path)
    assert load_checkpoint(resumed / "checkpoint.pt")["env_step"] == 20
    run("train.py", *args, "trainer.env_steps=40", f"hydra.run.dir={resumed}", cwd=tmp_path)
    saved = load_checkpoint(resumed / "checkpoint.pt")
    assert saved["env_step"] == 40 and saved["agent"]["updates"] == 39
    assert (
        "resumed from" in (resumed / "train.log").read_text() and "compiled step" in (resumed / "train.log").read_text()
    )
    assert torch.equal(_params(straight), _params(resumed))
    eager = tmp_path / "eager"
    run("train.py", *args[:-1], "trainer.env_steps=40", f"hydra.run.dir={eager}", cwd=tmp_path)
    assert not torch.equal(_params(straight), _params(eager))  # the fresh users differ: another run
