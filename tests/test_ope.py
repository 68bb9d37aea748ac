"""Off-policy estimators where the answer is known, and on the Open Bandit Dataset sample."""

import math

import pytest
import torch

from rlrec.data.obd import OBDFormatError, load_obd
from rlrec.eval.ope import off_policy_estimates, uniform_probs


def synthetic_logs(n, seed, n_contexts=5, n_items=6):
    """Contexts, a softmax logging policy, known click probabilities; and a different target policy."""
    world = torch.Generator().manual_seed(1234)  # the same world in every draw
    q = torch.rand(n_contexts, n_items, generator=world, dtype=torch.float64) * 0.3
    logging = torch.softmax(torch.randn(n_contexts, n_items, generator=world, dtype=torch.float64), -1)
    target = torch.softmax(2 * torch.randn(n_contexts, n_items, generator=world, dtype=torch.float64), -1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(n_contexts, (n,), generator=g)
    a = torch.multinomial(logging[x], 1, generator=g).squeeze(1)
    r = (torch.rand(n, generator=g, dtype=torch.float64) < q[x, a]).double()
    truth = float((target * q).sum(1).mean())  # contexts are uniform
    return dict(x=x, a=a, r=r, q=q, logging=logging, target=target, truth=truth)


def test_ips_of_the_logging_policy_is_the_empirical_click_rate():
    d = synthetic_logs(3000, seed=0)
    est = off_policy_estimates(d["r"], d["a"], d["logging"][d["x"], d["a"]], d["logging"][d["x"]])
    assert est["ips"].value == pytest.approx(float(d["r"].mean()), abs=1e-12)
    assert est["snips"].value == pytest.approx(float(d["r"].mean()), abs=1e-12)


def test_ips_and_dr_are_unbiased_and_their_intervals_cover():
    draws = 40
    values = {"ips": [], "dr": []}
    covered = {"ips": 0, "dr": 0}
    truth = None
    for seed in range(draws):
        d = synthetic_logs(2000, seed=seed)
        truth = d["truth"]
        noisy_model = (d["q"] + 0.05).clamp(0, 1)[d["x"]]  # a biased reward model: DR must still be unbiased
        est = off_policy_estimates(
            d["r"],
            d["a"],
            d["logging"][d["x"], d["a"]],
            d["target"][d["x"]],
            reward_model=noisy_model,
            n_boot=300,
            seed=seed,
        )
        for name in values:
            values[name].append(est[name].value)
            covered[name] += est[name].ci_low <= truth <= est[name].ci_high
    for name, vals in values.items():
        vals = torch.tensor(vals)
        se = float(vals.std()) / math.sqrt(draws)
        assert abs(float(vals.mean()) - truth) < 3 * se, name
        assert covered[name] >= 0.8 * draws, (name, covered[name])


def test_dr_with_a_perfect_reward_model_has_lower_variance_than_ips():
    """Per-row contributions decide an estimator's variance: compare them on one large log, and the
    spread of the estimates over repeated draws."""
    d = synthetic_logs(50_000, seed=7)
    est = off_policy_estimates(
        d["r"],
        d["a"],
        d["logging"][d["x"], d["a"]],
        d["target"][d["x"]],
        reward_model=d["q"][d["x"]],
        n_boot=400,
        seed=0,
    )
    ips_width = est["ips"].ci_high - est["ips"].ci_low
    dr_width = est["dr"].ci_high - est["dr"].ci_low
    assert dr_width < 0.97 * ips_width
    ips, dr = [], []
    for seed in range(60):
        d = synthetic_logs(2000, seed=100 + seed)
        e = off_policy_estimates(
            d["r"],
            d["a"],
            d["logging"][d["x"], d["a"]],
            d["target"][d["x"]],
            reward_model=d["q"][d["x"]],
            n_boot=20,
            seed=seed,
        )
        ips.append(e["ips"].value)
        dr.append(e["dr"].value)
    assert float(torch.tensor(dr).var()) < float(torch.tensor(ips).var())


@pytest.mark.parametrize("campaign", ["men", "women"])
def test_random_policy_value_from_bts_logs_covers_its_on_policy_value(campaign):
    on_policy = float(load_obd(policy="random", campaign=campaign, with_affinity=False).click.mean())
    bts = load_obd(policy="bts", campaign=campaign, with_affinity=False)
    est = off_policy_estimates(
        bts.click, bts.action, bts.propensity, uniform_probs(len(bts), bts.n_items), n_boot=1000, seed=0
    )
    for name in ("ips", "snips"):
        assert est[name].ci_low <= on_policy <= est[name].ci_high, (name, est[name], on_policy)


# ----------------------------------------------------------------------------- the loader
def test_sample_loads_with_the_documented_shapes():
    data = load_obd(policy="random", campaign="men")
    assert len(data) == 10_000 and data.n_items == 34
    assert data.affinity.shape == (10_000, 34) and data.user_features.shape == (10_000, 4)
    assert set(data.position.unique().tolist()) == {0, 1, 2}
    assert float(data.click.sum()) == 46  # the README's 0.46%
    torch.testing.assert_close(data.propensity, torch.full((10_000,), 1 / 34, dtype=torch.float64))


def _copy_sample(tmp_path, mutate):
    import gzip
    import shutil

    from rlrec.data.obd import SAMPLE_DIR

    target = tmp_path / "random" / "men"
    target.mkdir(parents=True)
    shutil.copy(SAMPLE_DIR / "random" / "men" / "item_context.csv.gz", target)
    with gzip.open(SAMPLE_DIR / "random" / "men" / "men.csv.gz", "rt") as f:
        lines = f.read().splitlines()
    (target / "men.csv").write_text("\n".join(mutate(lines)) + "\n")
    return tmp_path


def test_missing_file_is_named(tmp_path):
    with pytest.raises(OBDFormatError, match=r"random/women is not a directory"):
        load_obd(tmp_path, policy="random", campaign="women")


def test_missing_column_is_named(tmp_path):
    def drop_click(lines):
        return [line.replace(",click,", ",clack,") if i == 0 else line for i, line in enumerate(lines)]

    with pytest.raises(OBDFormatError, match="click"):
        load_obd(_copy_sample(tmp_path, drop_click))


@pytest.mark.parametrize("value, line", [("abc", 7), ("0.0", 4), ("1.5", 9)])
def test_bad_propensity_names_file_line_and_column(tmp_path, value, line):
    def corrupt(lines):
        cells = lines[line - 1].split(",")
        cells[5] = value
        lines[line - 1] = ",".join(cells)
        return lines

    with pytest.raises(OBDFormatError, match=rf"men\.csv, line {line}.*'propensity_score'"):
        load_obd(_copy_sample(tmp_path, corrupt))


def test_empty_cell_names_file_line_and_column(tmp_path):
    def empty_click(lines):
        header = lines[0].split(",")
        cells = lines[5000].split(",")  # line 5001 of the file, past the first parsed blocks
        cells[header.index("click")] = ""
        lines[5000] = ",".join(cells)
        return lines

    with pytest.raises(OBDFormatError, match=r"men\.csv, line 5001, column 'click': empty"):
        load_obd(_copy_sample(tmp_path, empty_click), block_size=1 << 16)


def test_a_click_that_is_not_0_or_1_names_file_line_and_column(tmp_path):
    def seven(lines):
        header = lines[0].split(",")
        cells = lines[41].split(",")
        cells[header.index("click")] = "7"
        lines[41] = ",".join(cells)
        return lines

    with pytest.raises(OBDFormatError, match=r"men\.csv, line 42, column 'click': 7 is not 0 or 1"):
        load_obd(_copy_sample(tmp_path, seven))


def test_a_file_with_only_a_header_is_refused_at_once(tmp_path):
    with pytest.raises(OBDFormatError, match="has a header but no data rows"):
        load_obd(_copy_sample(tmp_path, lambda lines: lines[:1]))


def test_an_item_price_that_is_not_a_number_is_named(tmp_path):
    import gzip

    root = _copy_sample(tmp_path, lambda lines: lines)
    item_path = root / "random" / "men" / "item_context.csv.gz"
    with gzip.open(item_path, "rt") as f:
        lines = f.read().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index("item_feature_0")] = "cheap"
    lines[3] = ",".join(cells)
    item_path.unlink()
    (item_path.parent / "item_context.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(OBDFormatError, match=r"item_context\.csv, line 4, column 'item_feature_0': 'cheap'"):
        load_obd(root)


@pytest.mark.parametrize("block_size", [1 << 14, 1 << 20])
def test_small_blocks_and_a_missing_final_newline_load_the_same_rows(tmp_path, block_size):
    """Outputs are preallocated from a line count; a file without a final newline must not lose its last row."""
    reference = load_obd(policy="random", campaign="men")
    path = _copy_sample(tmp_path, lambda lines: lines) / "random" / "men" / "men.csv"
    path.write_text(path.read_text().rstrip("\n"))
    data = load_obd(tmp_path, block_size=block_size)
    for name in ("action", "position", "click", "propensity", "user_features", "affinity"):
        assert torch.equal(getattr(data, name), getattr(reference, name)), name


# ----------------------------------------------------------------------------- click model metrics
def test_auc_and_log_loss_match_their_definitions():
    from rlrec.data.click_model import auc, log_loss

    y = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0])
    assert auc(torch.tensor([0.1, 0.2, 0.8, 0.9, 0.3]), y) == 1.0
    assert auc(torch.tensor([0.9, 0.8, 0.1, 0.2, 0.7]), y) == 0.0
    assert auc(torch.full((5,), 0.5), y) == 0.5  # ties count one half
    # pairs (pos, neg): 0.4 beats 0.1 and 0.3, loses to 0.5; 0.6 beats all three -> 5/6
    assert auc(torch.tensor([0.1, 0.5, 0.4, 0.6, 0.3]), y) == pytest.approx(5 / 6)
    p = torch.tensor([0.2, 0.5, 0.9, 0.6, 0.1])
    expected = -sum(math.log(1 - q) if t == 0 else math.log(q) for q, t in zip(p.tolist(), y.tolist())) / 5
    assert log_loss(p, y) == pytest.approx(expected)


def synthetic_click_logs(n, seed, n_items=20):
    """Logs whose clicks follow a known logistic model: item, position and one user feature matter."""
    from rlrec.data.obd import LoggedData

    g = torch.Generator().manual_seed(seed)
    world = torch.Generator().manual_seed(99)
    item_effect = torch.randn(n_items, generator=world, dtype=torch.float64)
    position_effect = torch.tensor([0.6, 0.0, -0.6], dtype=torch.float64)
    user_effect = torch.tensor([-0.8, 0.0, 0.8], dtype=torch.float64)
    users = torch.randint(3, (n, 4), generator=g)
    action, position = torch.randint(n_items, (n,), generator=g), torch.randint(3, (n,), generator=g)
    logit = -4.0 + item_effect[action] + position_effect[position] + user_effect[users[:, 0]]
    click = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(logit)).float()
    data = LoggedData(
        action=action,
        position=position,
        click=click,
        propensity=torch.full((n,), 1.0 / n_items, dtype=torch.float64),
        user_features=users,
        affinity=None,
        item_price=torch.zeros(n_items),
        item_categories=torch.zeros(n_items, 3, dtype=torch.long),
        user_vocab=[[str(v) for v in range(3)]] * 4,
    )
    return data, item_effect, position_effect, user_effect


@pytest.mark.slow
def test_click_model_beats_both_baselines_where_clicks_have_structure():
    from rlrec.data.click_model import cross_validate, fit_click_model

    data, item_effect, position_effect, user_effect = synthetic_click_logs(20_000, seed=0)
    report = cross_validate(data, n_boot=300)
    for baseline in ("constant", "per_item"):
        assert report[baseline]["log_loss_vs_click_model_ci"][0] > 0, (baseline, report[baseline])
    assert report["click_model"]["auc"] > report["per_item"]["auc"] > 0.55
    model = fit_click_model(data, l2=1.0)
    centred = lambda t: t - t.mean()
    assert torch.corrcoef(torch.stack([centred(model.item), item_effect]))[0, 1] > 0.9
    torch.testing.assert_close(centred(model.position), position_effect, atol=0.15, rtol=0)
    torch.testing.assert_close(centred(model.user[0]), user_effect, atol=0.15, rtol=0)


@pytest.mark.slow
def test_click_model_on_the_sample_is_regularised_not_overfitted():
    """On the shipped sample (~100 clicks per campaign) the features carry almost no click signal:
    the cross-validated prior must keep the model within a hair of the constant rate (an
    unregularised fit of the same features loses 7e-4 nats per row there)."""
    from rlrec.data.click_model import cross_validate, pool_logs

    data = pool_logs(load_obd(policy="random", campaign="women"), load_obd(policy="bts", campaign="women"))
    assert len(data) == 20_000 and len(data.user_vocab[2]) >= 8
    report = cross_validate(data, n_boot=200)
    assert set(report) == {"constant", "per_item", "click_model"}
    assert report["constant"]["clicks"] == int(data.click.sum()) > 0
    assert report["click_model"]["log_loss"] < report["constant"]["log_loss"] + 1e-4
    for metrics in report.values():
        assert 0 < metrics["log_loss"] < 0.1  # a 0.5% click rate: a constant model scores about 0.03


def test_pooling_logs_of_different_catalogues_is_refused():
    from rlrec.data.click_model import pool_logs

    with pytest.raises(ValueError, match="catalogues differ"):
        pool_logs(
            load_obd(policy="random", campaign="men", with_affinity=False),
            load_obd(policy="random", campaign="women", with_affinity=False),
        )
