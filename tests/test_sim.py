"""The batched shop: semantics, reproducibility, bad input, realistic behaviour."""

import gymnasium
import numpy as np
import pytest
import torch
from conftest import DEVICES

from rlrec.config import ConfigError, env_config_from, env_preset
from rlrec.eval.rollout import run_sessions
from rlrec.sim import response
from rlrec.sim.describe import describe
from rlrec.sim.env import Shop, random_slates, sample_categorical
from rlrec.sim.privileged import Yardstick


def test_step_shapes_and_ranges(small_shop):
    obs = small_shop.reset(seed=0)
    b, h = small_shop.num_users, small_shop.cfg.history_len
    assert obs["user_features"].shape == (b, 3) and obs["history_items"].shape == (b, h)
    assert "satisfaction" not in obs  # hidden in the realistic shop
    for _ in range(50):
        obs, reward, done, info = small_shop.step(small_shop.random_slate())
        assert reward.shape == (b,) and done.dtype == torch.bool
        assert bool((info["rating"][~info["purchase"]] == 0).all())
        assert bool((info["rating"][info["purchase"]] >= 1).all()) and bool((info["rating"] <= 5).all())
        assert bool((info["purchase"] <= info["click"]).all())
        assert bool((obs["step"][done] == 0).all()), "finished rows restart with a fresh user"
        assert bool((obs["step"] < small_shop.cfg.horizon).all())
        assert bool((obs["history_items"] <= small_shop.n_items).all())


def test_reward_is_the_documented_formula(small_shop):
    cfg = small_shop.cfg
    small_shop.reset(seed=3)
    for _ in range(20):
        _, reward, _, info = small_shop.step(small_shop.random_slate())
        expected = cfg.w_purchase * info["purchase"].float() + cfg.w_rating * info["rating"].float()
        torch.testing.assert_close(reward, expected)


def test_history_records_the_response(small_shop):
    small_shop.reset(seed=1)
    slate = small_shop.random_slate()
    _, _, done, info = small_shop.step(slate)
    final = info["final_obs"]
    code = final["history_codes"][:, -1]
    item = final["history_items"][:, -1]
    clicked = info["click"]
    assert bool((item[clicked] == slate[clicked, info["choice"][clicked]]).all())
    assert bool((item[~clicked] == slate[~clicked, 0]).all())
    assert bool((code[~clicked] == response.IGNORED).all())
    bought = info["purchase"]
    assert bool((code[bought] == response.PURCHASED + info["rating"][bought] - 1).all())
    assert bool((code[clicked & ~bought] == response.CLICKED).all())


def test_sessions_end_at_the_horizon():
    shop = Shop(
        env_preset("default", device="cpu", num_users=32, leave_prob_unhappy=0.0, leave_prob_happy=0.0, horizon=4)
    )
    shop.reset(seed=0)
    for t in range(1, 9):
        _, _, done, info = shop.step(shop.random_slate())
        assert bool(done.all()) == (t % 4 == 0)
        assert not bool(info["left"].any())


def test_sample_categorical_follows_probs():
    probs = torch.tensor([[0.1, 0.2, 0.7]]).expand(200_000, 3)
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(sample_categorical(probs, u), minlength=3).double() / 200_000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64), atol=4e-3, rtol=0)


def test_random_slates_are_distinct_and_uniform():
    g = torch.Generator().manual_seed(0)
    slates = random_slates(20_000, 7, 3, g)
    assert bool((slates.sort(dim=1).values.diff(dim=1) > 0).all())
    freq = torch.bincount(slates.flatten(), minlength=7).double() / slates.numel()
    assert float((freq - 1 / 7).abs().max()) < 0.01
    slot_freq = torch.bincount(slates[:, 2], minlength=7).double() / 20_000
    assert float((slot_freq - 1 / 7).abs().max()) < 0.015  # no slot prefers high ids


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_trajectory(device):
    def trajectory():
        shop = Shop(env_preset("default", device=device, num_users=128, seed=5))
        obs = shop.reset(seed=11)
        out = []
        for _ in range(40):
            obs, reward, done, _ = shop.step(shop.random_slate())
            out.append(torch.cat([reward, done.float(), obs["history_items"].float().flatten()]))
        return torch.cat(out).cpu()

    first, second = trajectory(), trajectory()
    assert torch.equal(first, second)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_step_matches_the_eager_reference(device):
    """env.compile=true must sample the same responses as the eager transition.

    Both shops start every step from the same state and generator state, so any difference
    comes from the compiled arithmetic alone (a fused exp may move a probability by an ulp).
    """
    torch._dynamo.reset()
    cfg = env_preset("default", device=device, num_users=2048, n_items=500, slate_size=4, seed=2)
    eager, compiled = Shop(cfg), Shop(cfg, compile=True)
    agree, rows = 0, 0
    for _ in range(15):
        slate = eager.random_slate()
        compiled.state = eager.state
        compiled.generator.set_state(eager.generator.get_state())
        a, b = eager.step(slate), compiled.step(slate)
        same = (a.info["choice"] == b.info["choice"]) & (a.info["rating"] == b.info["rating"]) & (a.done == b.done)
        agree, rows = agree + int(same.sum()), rows + same.numel()
        torch.testing.assert_close(b.reward[same], a.reward[same])
        assert bool(a.done.any())  # the in-place reset of finished rows is exercised too
    assert agree / rows >= 0.999, f"compiled and eager steps agree on only {agree / rows:.4%} of user-steps"


def test_compiled_sampler_is_the_eager_sampler():
    """The unrolled running sum used under torch.compile draws the same index as cumsum."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(5000, 11, generator=g), dim=-1)
    u = torch.rand(5000, generator=g)
    assert torch.equal(torch.compile(sample_categorical)(probs, u), sample_categorical(probs, u))


def test_compile_failure_names_the_switch(monkeypatch):
    class BackendCompilerFailed(RuntimeError):
        pass

    BackendCompilerFailed.__module__ = "torch._dynamo.exc"

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise BackendCompilerFailed("no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    shop = Shop(env_preset("default", device="cpu", num_users=8, compile=True))
    with pytest.raises(RuntimeError, match="env.compile=false"):
        shop.step(shop.random_slate())


def test_different_seed_different_trajectory():
    a = Shop(env_preset("default", device="cpu", num_users=64, seed=1))
    b = Shop(env_preset("default", device="cpu", num_users=64, seed=2))
    assert not torch.equal(a.catalog.price, b.catalog.price)


def test_catalog_does_not_depend_on_the_batch_size():
    shop = Shop(env_preset("default", device="cpu", seed=3, num_users=4))
    again = Shop(env_preset("default", device="cpu", seed=3, num_users=99))
    assert torch.equal(shop.catalog.latent, again.catalog.latent)


def test_hype_is_anticorrelated_with_quality():
    shop = Shop(env_preset("default", device="cpu", num_users=4))
    corr = torch.corrcoef(torch.stack([shop.catalog.hype, shop.catalog.quality]))[0, 1]
    assert float(corr) < -0.5


# ----------------------------------------------------------------------------- bad input
def test_slate_larger_than_catalog_is_refused():
    with pytest.raises(ConfigError, match=r"env\.slate_size = 11 .*at most n_items = 10"):
        Shop(env_preset("default", n_items=10, slate_size=11, device="cpu"))


def test_item_id_out_of_range_is_refused(small_shop):
    small_shop.reset()
    slate = small_shop.random_slate()
    slate[3, 1] = small_shop.n_items
    with pytest.raises(ValueError, match=r"item id 200, out of range.*0\.\.199"):
        small_shop.step(slate)
    slate[3, 1] = -1
    with pytest.raises(ValueError, match="item id -1"):
        small_shop.step(slate)


def test_wrong_slate_shape_is_refused(small_shop):
    with pytest.raises(ValueError, match=r"\[num_users, slate_size\] = \[64, 5\]"):
        small_shop.step(torch.zeros(64, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer item ids"):
        small_shop.step(torch.zeros(64, 5))


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("w_purchase", -1.0, ">= 0"),
        ("w_rating", -0.5, ">= 0"),
        ("leave_prob_unhappy", 1.5, r"probability in \[0, 1\]"),
        ("ignore_penalty_prob", -0.1, r"probability in \[0, 1\]"),
        ("interest_drift", 2.0, r"probability in \[0, 1\]"),
        ("fit_weight", -3.0, ">= 0"),
        ("n_items", 0, "integer >= 1"),
        ("rating_thresholds", [3.0, 2.0, 1.0, 0.0], "increasing"),
        ("initial_satisfaction", 9, "0..4"),
    ],
)
def test_invalid_values_name_the_field(field, value, allowed):
    with pytest.raises(ConfigError, match=rf"env\.{field} = .*{allowed}"):
        env_preset("default", **{field: value})


def test_unknown_field_is_refused():
    with pytest.raises(ConfigError, match=r"unknown env field\(s\) \['n_itemz'\]"):
        env_config_from(None, n_itemz=5)


def test_unknown_device_is_refused():
    with pytest.raises(ConfigError, match="not a device name"):
        Shop(env_preset("default", device="tpu9"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            Shop(env_preset("default", device="cuda"))


# ----------------------------------------------------------------------------- behaviour
def test_long_horizon_rule_beats_myopic_on_the_default_shop():
    """RL is needed: a quality-aware rule beats the myopic oracle, 95% CIs apart."""
    shop = Shop(env_preset("default", device="cpu", num_users=1024))
    myopic = run_sessions(shop, Yardstick("myopic_oracle", shop), seed=0).summary()["episodic_return"]
    patient = run_sessions(shop, Yardstick("quality_aware", shop), seed=0).summary()["episodic_return"]
    assert patient["mean"] - patient["ci95"] > myopic["mean"] + myopic["ci95"]
    assert patient["mean"] > 1.5 * myopic["mean"]


def test_describe_reports_plausible_defaults():
    report = describe(env_preset("default", device="cpu"), num_users=512)
    random, myopic = report["random"], report["myopic_oracle"]
    assert 0.15 < random["ctr"]["mean"] < 0.5
    assert 0.15 < random["purchases_per_click"]["mean"] < 0.6
    assert myopic["ctr"]["mean"] > random["ctr"]["mean"]
    assert 4.0 < random["episode_length"]["mean"] < 12.0
    shares = random["rating_share"]
    assert abs(sum(shares) - 1.0) < 1e-9 and max(shares) == shares[4]  # J-shaped: 5 stars is the mode
    assert report["quality_aware"]["avg_rating"]["mean"] > myopic["avg_rating"]["mean"] + 1.0


# ----------------------------------------------------------------------------- gymnasium
def test_single_user_env_passes_gymnasium_checker():
    from gymnasium.utils.env_checker import check_env

    import rlrec.sim.gym  # noqa: F401  (registers the id)

    env = gymnasium.make("rlrec/Shop-v0", n_items=50).unwrapped
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_vector_env_rollout():
    from gymnasium.vector import AutoresetMode

    import rlrec.sim.gym  # noqa: F401

    envs = gymnasium.make_vec(
        "rlrec/Shop-v0", num_envs=16, vectorization_mode="vector_entry_point", n_items=50, horizon=5
    )
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, _ = envs.reset(seed=0)
    envs.action_space.seed(0)
    finished = 0
    for _ in range(20):
        obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        assert envs.observation_space.contains(obs)
        assert reward.shape == (16,) and not truncated.any()
        if terminated.any():
            finished += int(terminated.sum())
            assert (obs["step"][terminated] == 0).all()  # same-step reset
            assert (info["final_obs"]["step"][info["_final_obs"]] >= 1).all()
    assert finished >= 16 * 20 // 5 - 16  # horizon 5: every user finishes about every 5 steps
    envs.close()


def test_tiny_env_action_space_is_discrete():
    import rlrec.sim.gym  # noqa: F401

    env = gymnasium.make("rlrec/Shop-v0", env_cfg=env_preset("tiny")).unwrapped
    assert isinstance(env.action_space, gymnasium.spaces.Discrete) and env.action_space.n == 5
    obs, _ = env.reset(seed=1)
    obs, reward, terminated, truncated, _ = env.step(np.int64(2))
    assert "satisfaction" in obs and isinstance(reward, float)


def test_single_user_env_final_observation_lies_in_the_space():
    import rlrec.sim.gym  # noqa: F401

    env = gymnasium.make("rlrec/Shop-v0", n_items=20, horizon=3, leave_prob_unhappy=0.0, leave_prob_happy=0.0).unwrapped
    obs, _ = env.reset(seed=0)
    terminated = False
    while not terminated:
        obs, _, terminated, _, _ = env.step(env.action_space.sample())
    assert obs["step"] == 3 and env.observation_space.contains(obs)


# ----------------------------------------------------------------------------- the shop fitted to logs
@pytest.fixture(scope="module")
def obd_shop():
    return Shop(env_preset("obd", device="cpu", num_users=4096, slate_size=1))


def test_fitted_shop_takes_catalog_and_users_from_the_logs(obd_shop):
    from rlrec.sim.fitted import obd_logs

    logs = obd_logs(obd_shop.cfg)
    assert obd_shop.n_items == obd_shop.cfg.n_items == logs.n_items == 34  # the men campaign's items
    assert obd_shop.users.feature_sizes == tuple(int(logs.user_features[:, i].max()) + 1 for i in range(3))
    assert torch.equal(obd_shop.catalog.category, logs.item_categories[:, 0])
    # price follows the logged item_feature_0 (same order)
    assert torch.equal(obd_shop.catalog.price.argsort(), logs.item_price.argsort())
    # new users arrive with the logs' joint feature frequencies
    features = torch.cat([obd_shop.reset(seed=s)["user_features"] for s in range(10)])
    seen = obd_shop.users.segment_index(features)
    logged = obd_shop.users.segment_index(logs.user_features)
    n_seg = obd_shop.users.n_segments
    freq = torch.bincount(seen, minlength=n_seg).double() / seen.numel()
    target = torch.bincount(logged, minlength=n_seg).double() / logged.numel()
    assert float((freq - target).abs().max()) < 0.01 and float(freq[target == 0].sum()) == 0


def test_fitted_shop_clicks_with_the_fitted_model(obd_shop):
    """A lone item is clicked with exactly the click model's probability, and the simulator samples it."""
    from rlrec.sim.fitted import obd_click_model

    model = obd_click_model(obd_shop.cfg)
    cfg, cat = obd_shop.cfg, obd_shop.catalog
    items = torch.arange(obd_shop.n_items)
    utilities = response.click_utilities(
        torch.zeros(len(items), 1), cat.hype[items].unsqueeze(1), obd_shop._slot_bias, cfg
    )
    shop_prob = response.click_probs(utilities, cfg)[:, 1].double()
    fitted = torch.sigmoid(
        model.logits(torch.zeros(len(items), 0, dtype=torch.long), items, torch.zeros(len(items), dtype=torch.long))
    )
    torch.testing.assert_close(shop_prob, fitted, rtol=1e-5, atol=1e-7)
    clicks, shows = torch.zeros(obd_shop.n_items), torch.zeros(obd_shop.n_items)
    for _ in range(150):
        slate = obd_shop.random_slate()
        result = obd_shop.step(slate)
        shows += torch.bincount(slate[:, 0], minlength=obd_shop.n_items)
        clicks += torch.bincount(slate[:, 0], weights=result.info["click"].float(), minlength=obd_shop.n_items)
    expected = float((shop_prob * shows.double()).sum())
    assert abs(float(clicks.sum()) - expected) < 4 * expected**0.5  # Poisson-scale error


def test_fitted_shop_refuses_more_slots_than_the_logs_have():
    with pytest.raises(ConfigError, match="slate_size = 5 is invalid: it must be at most 3 with logs=obd"):
        env_preset("obd", slate_size=5)
