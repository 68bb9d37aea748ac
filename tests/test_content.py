"""Item content, new items and the agents' view of them: the shop's stream, content vectors and files,
the catalog's mask, the unseen items' ids, the new-item metrics, the shifted shops."""

import copy
import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_hardening import _one_error_line
from test_workflow import FAST, ROOT

from rlrec.agents.base import AgentSpec, make_transition
from rlrec.agents.baselines import BanditAgent, PopularAgent, RandomAgent
from rlrec.agents.dqn import DQNAgent
from rlrec.agents.nets import QNetwork
from rlrec.config import ConfigError, EnvConfig, env_preset
from rlrec.data.content import ContentFileError, file_sha256, load_content
from rlrec.eval.rollout import ITEM_KIND_METRICS, METRICS, run_sessions
from rlrec.eval.shifts import check_same_catalog, shift_names, shift_overrides, shop_config
from rlrec.sim.catalog import make_arrivals
from rlrec.sim.env import Shop
from rlrec.sim.privileged import YARDSTICKS, Yardstick
from rlrec.train.compiled import TrainStep
from rlrec.train.distributed import wrap_agent
from rlrec.train.loop import train_steps
from rlrec.train.run import catalog_fingerprint


def digest(*tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def shop_digests(**overrides):
    """(catalog digest, digest of 20 random steps) of a 64-user default shop with ``overrides``."""
    shop = Shop(env_preset("default", device="cpu", num_users=64, **overrides))
    c = shop.catalog
    catalog = digest(c.category, c.brand, c.price, c.quality, c.hype, c.latent)
    shop.reset(seed=3)
    outs = []
    for _ in range(20):
        r = shop.step(shop.random_slate())
        outs += [r.reward, r.info["click"].long(), r.info["item"], r.obs["user_features"]]
    return catalog, digest(*outs)


# ----------------------------------------------------------------------------- the shop's stream
def test_the_default_shop_is_the_one_before_content_existed():
    """Digests taken on main before this feature: the default catalog and its first 20 steps are unchanged."""
    assert shop_digests() == ("c2056b3c32c685f8", "6dd2388733e9ed79")


@pytest.mark.parametrize(
    "overrides",
    [{"content_dim": 16}, {"content_dim": 16, "content_noise": 50.0}, {"user_seed": None, "age_mix": 0.0}],
)
def test_content_leaves_the_catalog_users_and_responses_alone(overrides):
    """Content comes from a generator of its own: switching it on changes nothing else."""
    assert shop_digests(**overrides) == shop_digests()


def test_new_items_and_other_users_keep_the_catalog():
    base = Shop(env_preset("default", device="cpu", num_users=8)).catalog
    for overrides in ({"holdout_items": 0.2, "new_item_rate": 1.0}, {"user_seed": 5}, {"age_mix": 2.0}):
        other = Shop(env_preset("default", device="cpu", num_users=8, **overrides)).catalog
        assert all(
            torch.equal(getattr(base, f.name), getattr(other, f.name)) for f in fields(base) if f.name != "content"
        )


def test_user_seed_and_age_mix_change_the_customers():
    base = Shop(env_preset("default", device="cpu", num_users=8)).users
    other = Shop(env_preset("default", device="cpu", num_users=8, user_seed=1)).users
    assert not torch.equal(base.age_effect, other.age_effect)
    assert torch.equal(base.age_price_sensitivity, other.age_price_sensitivity)  # the ramp is not drawn
    young = Shop(env_preset("default", device="cpu", num_users=20_000, age_mix=2.5))
    ages = torch.bincount(young.state.user_features[:, 0], minlength=6).double() / 20_000
    expected = torch.exp(-2.5 * torch.linspace(0, 1, 6, dtype=torch.float64))
    torch.testing.assert_close(ages, expected / expected.sum(), atol=0.012, rtol=0)


# ----------------------------------------------------------------------------- synthetic content
def _r2(x: torch.Tensor, y: torch.Tensor, train: int) -> float:
    """Held-out R^2 of a least-squares fit of ``y`` on ``x`` (with an intercept), fitted on the first ``train`` rows."""
    x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    y = y.double()
    coef = torch.linalg.lstsq(x[:train], y[:train]).solution
    residual = y[train:] - x[train:] @ coef
    return float(1 - residual.pow(2).sum() / (y[train:] - y[train:].mean(0)).pow(2).sum())


@pytest.mark.parametrize("noise, low, high", [(0.0, 0.999, 1.0), (1.0, 0.5, 0.95), (100.0, -1.0, 0.05)])
def test_content_is_a_noisy_projection_of_fit_and_quality(noise, low, high):
    """The default informativeness reveals the hidden truth in part; no noise, fully; large noise, not at all."""
    shop = Shop(env_preset("default", device="cpu", num_users=8, n_items=3000, content_dim=32, content_noise=noise))
    content, catalog = shop.item_content, shop.catalog
    assert content.shape == (3000, 32) and content.dtype == torch.float32
    truth = torch.cat([catalog.latent, catalog.quality.unsqueeze(-1)], 1)
    r2 = _r2(content, truth, train=2000)
    assert low <= r2 <= high, r2
    assert abs(_r2(content, catalog.hype.unsqueeze(-1), train=2000)) < 0.6  # hype only through its tie to quality
    again = Shop(env_preset("default", device="cpu", num_users=8, n_items=3000, content_dim=32, content_noise=noise))
    assert torch.equal(content, again.item_content)


def test_the_spec_shows_content_never_the_hidden_truth():
    shop = Shop(env_preset("default", device="cpu", num_users=8, content_dim=16, holdout_items=0.2))
    spec = AgentSpec.from_shop(shop)
    assert torch.equal(spec.item_content, shop.item_content) and spec.content_dim == 16
    assert spec.item_available is shop.item_available  # live: the shop updates it in place
    hidden = (shop.catalog.quality, shop.catalog.hype, shop.catalog.latent)
    for value in asdict(spec).values():
        if isinstance(value, torch.Tensor):
            assert not any(value.shape == h.shape and torch.equal(value.float(), h.float()) for h in hidden)


# ----------------------------------------------------------------------------- content files
@pytest.fixture
def content_array():
    return np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)


def test_content_files_load_from_npy_and_safetensors(tmp_path, content_array):
    from safetensors.numpy import save_file

    npy = tmp_path / "content.npy"
    np.save(npy, content_array)
    loaded = load_content(npy, 60, 8, sha256=file_sha256(npy))
    assert torch.equal(loaded, torch.from_numpy(content_array))
    for name in ("content", "clip_embeddings"):  # the tensor named content, or the only one
        path = tmp_path / f"{name}.safetensors"
        save_file({name: content_array}, str(path))
        assert torch.equal(load_content(path, 60, 8), torch.from_numpy(content_array))
    shop = Shop(env_preset("default", device="cpu", num_users=8, n_items=60, content_dim=8, content_path=str(npy)))
    assert torch.equal(shop.item_content, torch.from_numpy(content_array))


def test_bad_content_files_give_one_clear_error_each(tmp_path, content_array):
    from safetensors.numpy import save_file

    path = tmp_path / "c.npy"
    np.save(path, content_array)
    with pytest.raises(ContentFileError, match=r"does not exist: set env.content_path to an existing"):
        load_content(tmp_path / "missing.npy", 60, 8)
    with pytest.raises(ContentFileError, match=r"shape \[60, 8\], but the shop expects \[n_items, content_dim\] = "):
        load_content(path, 60, 16)
    with pytest.raises(ContentFileError, match=r"has sha256 [0-9a-f]{64}, not env.content_sha256 = 0+"):
        load_content(path, 60, 8, sha256="0" * 64)
    nan = content_array.copy()
    nan[7, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(ContentFileError, match=r"holds 1 NaN or infinite value\(s\), the first at item 7, column 3"):
        load_content(tmp_path / "nan.npy", 60, 8)
    (tmp_path / "c.csv").write_text("1,2")
    with pytest.raises(ContentFileError, match="is neither .npy nor .safetensors"):
        load_content(tmp_path / "c.csv", 60, 8)
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(ContentFileError, match="is not a readable .npy array"):
        load_content(tmp_path / "bad.npy", 60, 8)
    save_file({"a": content_array, "b": content_array}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ContentFileError, match=r"holds tensors \['a', 'b'\]; name the content vectors 'content'"):
        load_content(tmp_path / "two.safetensors", 60, 8)
    with pytest.raises(ConfigError, match="env.content_dim = 0 is invalid: it must be the width of the vectors"):
        env_preset("default", content_path=str(path))
    with pytest.raises(ConfigError, match="env.content_sha256 = 'abc' is invalid: it must be 64 hexadecimal"):
        env_preset("default", content_path=str(path), content_dim=8, content_sha256="abc")


def test_train_refuses_a_bad_content_file_in_one_line_and_writes_nothing(tmp_path, content_array):
    good = tmp_path / "good.npy"
    np.save(good, content_array)
    nan = content_array.copy()
    nan[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    cases = {
        "missing": (["env.content_path=" + str(tmp_path / "none.npy"), "env.content_dim=8"], "does not exist"),
        "shape": ([f"env.content_path={good}", "env.content_dim=9"], "holds an array of shape [60, 8]"),
        "nan": ([f"env.content_path={tmp_path / 'nan.npy'}", "env.content_dim=8"], "NaN or infinite"),
        "checksum": ([f"env.content_path={good}", "env.content_dim=8", f"env.content_sha256={'a' * 64}"], "sha256"),
    }

    def attempt(item):
        name, (args, message) = item
        run_dir = tmp_path / name
        cmd = [sys.executable, str(ROOT / "train.py"), *FAST, *args, f"hydra.run.dir={run_dir}"]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        problems = _one_error_line(proc, message)
        if run_dir.exists() and any(run_dir.iterdir()):
            problems.append(f"wrote {sorted(p.name for p in run_dir.iterdir())}")
        return name, problems

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f"{name}: {problems}" for name, problems in pool.map(attempt, cases.items()) if problems]
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------- new items in the catalog
def test_new_items_stay_out_until_they_arrive_or_the_catalog_opens():
    shop = Shop(env_preset("default", device="cpu", num_users=16, n_items=100, holdout_items=0.2))
    available = shop.item_available
    assert int(available.sum()) == 80 and torch.equal(~available, shop.item_new)
    shop.reset(seed=0)
    for _ in range(5):
        assert bool(available[shop.random_slate()].all())
        shop.step(shop.random_slate())
    assert int(available.sum()) == 80  # new_item_rate = 0: none arrives in a run
    held = int(shop.item_new.nonzero()[0])
    slate = shop.random_slate()
    slate[3, 1] = held
    with pytest.raises(ValueError, match=f"slate shows item {held}, which is not in the catalog now"):
        shop.step(slate)
    assert shop.open_catalog().item_available is available and bool(available.all())  # in place
    shop.step(slate)  # now allowed
    shop.open_catalog(new_only=True)
    assert torch.equal(available, shop.item_new)
    with pytest.raises(ConfigError, match="a catalog of new items only needs at least slate_size = 5"):
        Shop(env_preset("default", device="cpu", num_users=4, n_items=100)).open_catalog(new_only=True)


def test_new_items_arrive_at_the_configured_rate():
    env = env_preset("default", device="cpu", num_users=8, n_items=100, holdout_items=0.2, new_item_rate=0.4)
    shop = Shop(env)
    shop.reset(seed=0)
    counts = []
    for _ in range(50):
        shop.step(shop.random_slate())
        counts.append(int(shop.item_available.sum()))
    # the j-th new item arrives after step ceil(j / 0.4): steps 3, 5, 8, 10, ..., 50 for the 20th
    assert counts[:10] == [80, 80, 81, 81, 82, 82, 82, 83, 83, 84] and counts[-2:] == [99, 100]
    resumed = Shop(env)
    resumed.restore_catalog(5, False)
    assert int(resumed.item_available.sum()) == 82
    cfg = env_preset("default", n_items=200, holdout_items=0.2, new_item_rate=0.7)
    arrival = make_arrivals(cfg, 200, torch.Generator())
    exact = [float(-(-10 * j // 7)) for j in range(1, 41)]  # ceil(j / 0.7) in integers; 21 / 0.7 = 30.000000000000004
    assert sorted(arrival[arrival > 0].tolist()) == exact


@pytest.mark.parametrize("overrides, message", [
    ({"holdout_items": 0.999, "n_items": 100}, "env.holdout_items = 0.999 is invalid: it must be small enough"),
    ({"new_item_rate": 1.0}, "env.new_item_rate = 1.0 is invalid: it must be 0 unless env.holdout_items > 0"),
    ({"holdout_items": 1.5}, "env.holdout_items = 1.5 is invalid: it must be a probability"),
    ({"content_noise": -1.0}, "env.content_noise = -1.0 is invalid"),
])  # fmt: skip
def test_bad_new_item_and_content_settings(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        env_preset("default", **overrides)


def _holdout_shop(**overrides):
    cfg = dict(device="cpu", num_users=32, n_items=80, content_dim=8, holdout_items=0.25) | overrides
    return Shop(env_preset("default", **cfg))


def test_the_compiled_and_distributed_trainers_take_content_and_refuse_a_changing_catalog():
    """Content is a fixed input: the launch-free step trains with it. A catalog that changes (held-out
    items, their ids unknown), and dropout (drawn from a generator no graph can hold), are refused
    with one error naming the setting."""
    small = dict(device="cpu", embed_dim=8, hidden_dim=16, buffer_size=64, batch_size=8, learning_starts=32)
    shop = _holdout_shop(holdout_items=0.0)
    agent = DQNAgent(AgentSpec.from_shop(shop), **small)
    before = agent.q.items.content.weight.clone()
    TrainStep(shop, agent, compile=False).run(4)
    assert agent.updates == 4 and not torch.equal(agent.q.items.content.weight, before)  # content's projection learns
    with pytest.raises(ConfigError, match=r"trainer.compile = true runs on a fixed catalog.*env.holdout_items = 0.25"):
        TrainStep(_holdout_shop(), DQNAgent(AgentSpec.from_shop(_holdout_shop()), **small), compile=False)
    with pytest.raises(ConfigError, match=r"does not take dropout \(agent.dropout = 0.1"):
        TrainStep(shop, DQNAgent(AgentSpec.from_shop(shop), dropout=0.1, **small), compile=False)
    with pytest.raises(ConfigError, match=r"trainer.distributed = true trains on a fixed catalog.*env.holdout_items"):
        wrap_agent(DQNAgent(AgentSpec.from_shop(_holdout_shop()), **small), SimpleNamespace(group=object()))


@pytest.mark.parametrize("make", [RandomAgent, PopularAgent, BanditAgent, DQNAgent], ids=lambda c: c.__name__)
def test_agents_and_yardsticks_recommend_only_from_the_catalog(make):
    shop = _holdout_shop()
    kwargs = {} if make in (RandomAgent, PopularAgent) else {"learning_starts": 32, "batch_size": 32}
    agent = make(AgentSpec.from_shop(shop), device="cpu", **kwargs)
    obs = shop.reset(seed=0)
    for _ in range(6):
        for explore in (False, True):
            assert bool(shop.item_available[agent.act(obs, explore=explore)].all())
        slate = agent.act(obs, explore=True)
        result = shop.step(slate)
        agent.observe(make_transition(obs, slate, result))
        agent.update()
        obs = result.obs
    probs = agent.action_probs(obs)
    assert float(probs[:, shop.item_new].sum()) == 0.0
    shop.open_catalog(new_only=True)  # the same tensor: the agent follows the shop
    assert bool(shop.item_new[agent.act(obs)].all())


def test_yardsticks_respect_the_catalog():
    shop = _holdout_shop()
    shop.reset(seed=0)
    for name in YARDSTICKS:
        assert bool(shop.item_available[Yardstick(name, shop).act(shop.observation())].all())


def test_evaluation_plays_an_agent_in_the_evaluated_shops_catalog():
    train_shop = _holdout_shop()
    agent = RandomAgent(AgentSpec.from_shop(train_shop), device="cpu")
    eval_shop = _holdout_shop().open_catalog(new_only=True)
    stats = run_sessions(eval_shop, agent, seed=0)  # refused by the shop if the agent showed warm items
    assert float(stats.new_items.shown.sum()) == float(stats.length.sum()) * 5
    assert agent.item_available is train_shop.item_available  # bound back to its own shop afterwards


# ----------------------------------------------------------------------------- unseen items' ids
def _perturb_rows(table: torch.Tensor, items: torch.Tensor) -> None:
    with torch.no_grad():
        table[items] += 10 * torch.randn(table[items].shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("head", ["dot", "mlp"])
def test_unseen_items_score_from_features_and_content_not_their_ids(head):
    """Items the network never trained on: their id embedding and bias do not move their Q value, in the
    item tower or in the history; items it acted on do, from the transition on."""
    shop = _holdout_shop().open_catalog()
    agent = DQNAgent(AgentSpec.from_shop(_holdout_shop()), device="cpu", head=head, embed_dim=8, hidden_dim=16)
    q = agent.q
    new, warm = shop.item_new.nonzero().squeeze(1), (~shop.item_new).nonzero().squeeze(1)
    obs = shop.reset(seed=0)
    for _ in range(3):  # histories that hold new items
        obs = shop.step(shop.random_slate()).obs
    assert bool(shop.item_new[obs["history_items"].clamp_max(79)].any())
    with torch.no_grad():
        before = q(obs)
        _perturb_rows(q.items.id.weight, new)
        _perturb_rows(q.history.item.weight, new)
        if head == "dot":
            _perturb_rows(q.item_bias.unsqueeze(-1), new)
        torch.testing.assert_close(q(obs), before, rtol=0, atol=0)
        _perturb_rows(q.items.id.weight, warm)
        assert not torch.allclose(q(obs)[:, warm], before[:, warm])
    seen = int(new[0])
    slate = torch.tensor([[seen, *warm[:4].tolist()]]).expand(32, -1).contiguous()
    result = shop.step(slate)
    agent.observe(make_transition(obs, slate, result))
    assert bool(q.items.known[seen]) == bool((result.info["item"] == seen).any())  # known once acted on


def test_id_dropout_and_dropout_act_in_training_only_and_resume_exactly():
    shop = _holdout_shop()
    spec = AgentSpec.from_shop(shop)
    hp = dict(device="cpu", dropout=0.3, id_dropout=0.5, learning_starts=32, batch_size=32, weight_decay=1e-3)
    agent = DQNAgent(spec, **hp)
    assert isinstance(agent.optimizer, torch.optim.AdamW) and agent.optimizer.defaults["weight_decay"] == 1e-3
    obs = shop.reset(seed=0)
    assert torch.equal(agent.q(obs), agent.q(obs))  # no dropout when acting
    noisy = [agent.q(obs, noise=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert not torch.equal(noisy[0], noisy[1])
    train_steps(shop, agent, 6)
    twin = DQNAgent(spec, **hp)
    twin.load_state_dict(copy.deepcopy(agent.state_dict()))  # as a checkpoint would: no shared tensors
    batch = agent.buffer.sample(32)
    twin.buffer.generator.set_state(agent.buffer.generator.get_state())
    agent.learn(batch), twin.learn(batch)
    for a, b in zip(agent.q.parameters(), twin.q.parameters()):
        assert torch.equal(a, b)
    sgd = DQNAgent(spec, device="cpu", optimizer="sgd", weight_decay=0.01)
    assert sgd.optimizer.defaults["weight_decay"] == 0.01


def test_content_reaches_the_item_and_history_vectors():
    spec = AgentSpec.from_shop(_holdout_shop())
    torch.manual_seed(0)
    with_content = QNetwork(spec, embed_dim=8, hidden_dim=16)
    without = QNetwork(spec, embed_dim=8, hidden_dim=16, use_content=False)
    assert with_content.items.content is not None and with_content.history.content is not None
    assert without.items.content is None and without.history.content is None
    items = with_content.items()
    with torch.no_grad():
        with_content.items.item_content[5] += 3.0
    changed = (with_content.items() - items).abs().sum(1) > 0
    assert changed.nonzero().squeeze(1).tolist() == [5]  # the item's own vector, no other


# ----------------------------------------------------------------------------- metrics
def test_new_item_metrics_add_up():
    shop = _holdout_shop(num_users=256).open_catalog()
    stats = run_sessions(shop, RandomAgent(AgentSpec.from_shop(shop), device="cpu"), seed=0)
    new, warm = stats.new_items, stats.warm_items
    torch.testing.assert_close(new.shown + warm.shown, 5 * stats.length.double())
    torch.testing.assert_close(new.clicks + warm.clicks, stats.clicks)
    torch.testing.assert_close(new.purchases + warm.purchases, stats.purchases)
    assert torch.equal(new.rating_counts + warm.rating_counts, stats.rating_counts)
    summary = stats.summary()
    assert set(summary) == set(METRICS)
    share = 1 - (1 - 0.25) ** 5  # random slates of 5 from 80 items of which 20 new: about 1 - 0.75^5
    assert abs(summary["new_item_share"]["mean"] - share) < 0.03
    new_ctr, warm_ctr = summary["new_item_ctr"], summary["warm_item_ctr"]  # random slates: no preference
    assert abs(new_ctr["mean"] - warm_ctr["mean"]) < 2 * np.hypot(new_ctr["ci95"], warm_ctr["ci95"])
    closed = run_sessions(_holdout_shop(num_users=64), RandomAgent(AgentSpec.from_shop(shop), device="cpu"), seed=0)
    assert float(closed.new_items.shown.sum()) == 0 and closed.summary()["new_item_share"]["mean"] == 0
    first_five = lambda obs: torch.arange(5).expand(32, 5)
    default = run_sessions(Shop(env_preset("default", device="cpu", num_users=32)), first_five, seed=0)
    assert not set(default.summary()) & set(ITEM_KIND_METRICS)  # no new items, no such figures


# ----------------------------------------------------------------------------- shifted shops
@pytest.mark.parametrize("name", ["heldout_users", *shift_names()])
def test_shifted_shops_change_the_customers_not_the_catalog(name):
    env = env_preset("default", device="cpu", num_users=8, n_items=100, content_dim=8, holdout_items=0.2)
    shifted = shop_config(env, name, heldout_user_seed=1)
    changed = {f.name for f in fields(EnvConfig) if getattr(env, f.name) != getattr(shifted, f.name)}
    assert changed == ({"user_seed"} if name == "heldout_users" else set(shift_overrides(name))) and changed
    train_shop, other = Shop(env), Shop(shifted)
    check_same_catalog(catalog_fingerprint(train_shop), other, name)
    assert torch.equal(train_shop.item_content, other.item_content)


def test_a_shift_that_changes_the_catalog_is_refused():
    env = env_preset("default", device="cpu", num_users=8, n_items=100)
    with pytest.raises(ConfigError, match="shop 'shift_price' changes the catalog the policy was trained on"):
        check_same_catalog(catalog_fingerprint(Shop(env)), Shop(env, seed=1), "shift_price")
    with pytest.raises(ConfigError, match=r"names unknown shop\(s\) \['nope'\]"):
        shop_config(env, "nope", 1)


def test_catalog_fingerprint_covers_content_and_new_items():
    base = catalog_fingerprint(_holdout_shop())
    assert catalog_fingerprint(_holdout_shop()) == base
    assert catalog_fingerprint(_holdout_shop(content_noise=2.0)) != base
    assert catalog_fingerprint(_holdout_shop(holdout_items=0.3)) != base
    assert catalog_fingerprint(_holdout_shop(num_users=8, age_mix=1.0)) == base  # the customers are not the catalog


# ----------------------------------------------------------------------------- gymnasium
def test_gymnasium_adapters_carry_content_and_the_catalog():
    from gymnasium.utils.env_checker import check_env

    from rlrec.sim.gym import ShopEnv, ShopVectorEnv

    env = ShopEnv(n_items=50, content_dim=6)
    check_env(env, skip_render_check=True)
    _, info = env.reset(seed=0)
    assert info["item_content"].shape == (50, 6) and info["item_content"].dtype == np.float32
    assert "item_available" not in info
    envs = ShopVectorEnv(num_envs=4, n_items=50, holdout_items=0.2, new_item_rate=1.0)
    _, info = envs.reset(seed=0)
    assert info["item_available"].shape == (50,) and int(info["item_available"].sum()) == 40
    ids = np.flatnonzero(info["item_available"])[:5]
    _, _, _, _, info = envs.step(np.tile(ids, (4, 1)))
    assert int(info["item_available"].sum()) == 41  # one new item per step
