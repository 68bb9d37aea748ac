"""Generalisation benchmark: agents with and without item content, judged in shops they were not trained in.

    python benchmarks/generalization.py --quick --out bench_generalization.json
    python benchmarks/generalization.py --seeds 3 --steps 3000
    python benchmarks/generalization.py --agents dqn bandit --arms content id_only noisy_content

The training shop is the default shop with content vectors (``env.content_dim``, at the
default informativeness ``env.content_noise`` unless ``--content-noise``) and 20% of the
catalog held out as new items (``env.holdout_items``), never shown in training. Each arm
trains every agent on it, one run per seed:

- ``content``: the agent sees the content vectors;
- ``id_only``: the same shop without content (``env.content_dim=0``; content comes from a
  generator of its own, so the catalog, the new items and the users are the same): ids,
  category, brand and price only;
- ``noisy_content``: content vectors that are noise (``env.content_noise`` = 100).

Then every trained policy plays, on the same evaluation users (common random numbers):

- ``training catalog``: the training shop as trained (new items still out);
- ``open catalog``: the training shop with the new items in (what evaluate.py reports),
  with the share of slates showing a new item and the CTR of new and warm items;
- ``new items only``: a catalog of the new items alone (a cold start): its return and
  ``new_item_ctr`` measure how well an agent recommends items it has never seen;
- ``heldout_users`` and each ``shift_*`` shop (rlrec/eval/shifts.py), catalog open.

The privileged yardsticks (``--yardsticks``) play every shop too: a shift can make a shop
easier or harder for everyone, so each agent's return is also given as a share of the
quality-aware rule's in the same shop.

Agents come from the registry (``--agents``, any learning agent; ``--set name.key=value``
overrides their conf/agent defaults). Prints tables and writes JSON ``{"config", "results":
{agent: {arm: {"seed_means", "train_wall_s_per_seed", "shops": {shop: <every metric of
rlrec.eval.rollout.METRICS>: {"mean", "ci95", "n"}}}}}, "yardsticks": {name: {shop: ...}}}``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import yaml

from benchmarks.learning import _parse_overrides
from rlrec.agents import AGENTS, agent_class, build_agent
from rlrec.agents.base import AgentSpec
from rlrec.config import env_preset
from rlrec.eval.output import markdown_table, mean_ci_cell
from rlrec.eval.rollout import SessionStats, make_baselines, run_sessions
from rlrec.eval.shifts import HELDOUT_USERS, shift_names, shop_config
from rlrec.sim.env import Shop
from rlrec.train.loop import train_steps

EVAL_SEED = 10_000
HELDOUT_USER_SEED = 1
ARMS = {"content": {}, "id_only": {"content_dim": 0}, "noisy_content": {"content_noise": 100.0}}
"""Each arm's change to the training shop."""
CATALOGS = ("training catalog", "open catalog", "new items only")


def training_env(
    arm: str,
    content_dim: int,
    content_noise: float | None,
    holdout_items: float,
    device: str,
    env_overrides: dict[str, Any] | None = None,
) -> Any:
    """The env config an arm trains in: the default shop (catalog seed 0) with content and new items
    (and ``env_overrides``, the same for every arm)."""
    fields = {"content_dim": content_dim, "holdout_items": holdout_items, "device": device, "seed": 0}
    if content_noise is not None:
        fields["content_noise"] = content_noise
    return env_preset("default", **{**(env_overrides or {}), **fields, **ARMS[arm]})


def evaluation_shops(env: Any, eval_users: int) -> dict[str, Shop]:
    """The shops every policy plays in: the training shop's three catalogs, other users, shifted shops."""
    shops = {
        "training catalog": Shop(env, num_users=eval_users),
        "open catalog": Shop(env, num_users=eval_users).open_catalog(),
        "new items only": Shop(env, num_users=eval_users).open_catalog(new_only=True),
    }
    for name in [HELDOUT_USERS, *shift_names()]:
        shops[name] = Shop(shop_config(env, name, HELDOUT_USER_SEED), num_users=eval_users).open_catalog()
    return shops


def run_yardsticks(names: tuple[str, ...], env: Any, eval_users: int) -> dict[str, dict[str, Any]]:
    """``{yardstick: {shop: summary}}``: the privileged rules in every evaluation shop."""
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    for label, shop in evaluation_shops(env, eval_users).items():
        for name, policy in make_baselines(names, shop, seed=0).items():
            out[name][label] = run_sessions(shop, policy, seed=EVAL_SEED).summary()
    return out


def run(
    agents: tuple[str, ...],
    arms: tuple[str, ...],
    seeds: int,
    steps: int,
    train_users: int,
    eval_users: int,
    device: str,
    content_dim: int = 32,
    content_noise: float | None = None,
    holdout_items: float = 0.2,
    overrides: dict[str, dict[str, Any]] | None = None,
    quiet: bool = False,
    env_overrides: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Train every agent in every arm for ``seeds`` seeds; return ``{agent: {arm: results}}`` (module docstring)."""
    overrides = overrides or {}
    results: dict[str, dict[str, Any]] = {}
    for name in agents:
        results[name] = {}
        for arm in arms:
            env = training_env(arm, content_dim, content_noise, holdout_items, device, env_overrides)
            stats: dict[str, list[SessionStats]] = {}
            wall = 0.0
            for seed in range(seeds):
                shop = Shop(env, num_users=train_users)
                shop.reset(seed=seed)
                agent = build_agent(
                    {"_target_": AGENTS[name], **overrides.get(name, {})},
                    AgentSpec.from_shop(shop),
                    seed=seed,
                    device=str(shop.device),
                )
                start = time.perf_counter()
                train_steps(shop, agent, steps)
                wall += time.perf_counter() - start
                for label, eval_shop in evaluation_shops(env, eval_users).items():
                    stats.setdefault(label, []).append(run_sessions(eval_shop, agent, seed=EVAL_SEED))
            shops = {label: SessionStats.concat(parts).summary() for label, parts in stats.items()}
            results[name][arm] = {
                "seed_means": [float(s.session_return.mean()) for s in stats["open catalog"]],
                "train_wall_s_per_seed": wall / seeds,
                "train_user_steps": steps * train_users,
                "shops": shops,
            }
            if not quiet:
                r = shops["open catalog"]["episodic_return"]
                print(
                    f"{name} {arm}: open catalog {r['mean']:.2f} ± {r['ci95']:.2f}, new items only "
                    f"{mean_ci_cell(shops['new items only']['episodic_return'], 2)} "
                    f"({wall / seeds:.0f} s of training per seed)",
                    flush=True,
                )
    return results


def format_tables(results: dict[str, dict[str, Any]], yardsticks: dict[str, dict[str, Any]] | None = None) -> str:
    """Markdown tables: session return in every shop (and as a share of the quality-aware rule's), and
    the new items' figures."""
    first = next(iter(next(iter(results.values())).values()))
    shops = list(first["shops"])
    yardsticks = yardsticks or {}
    returns, new_items, shares = [], [], []
    for name, by_shop in yardsticks.items():
        returns.append([name, "(privileged)"] + [mean_ci_cell(by_shop[shop]["episodic_return"], 2) for shop in shops])
    reference = yardsticks.get("quality_aware")
    for name, arms in results.items():
        for arm, r in arms.items():
            s = r["shops"]
            returns.append([name, arm] + [mean_ci_cell(s[shop]["episodic_return"], 2) for shop in shops])
            if reference is not None:
                shares.append(
                    [name, arm]
                    + [
                        f"{s[shop]['episodic_return']['mean'] / reference[shop]['episodic_return']['mean']:.2f}"
                        for shop in shops
                    ]
                )
            new_items.append(
                [
                    name,
                    arm,
                    mean_ci_cell(s["new items only"]["new_item_ctr"]),
                    mean_ci_cell(s["new items only"]["new_item_purchase_rate"]),
                    mean_ci_cell(s["new items only"]["new_item_rating"], 2),
                    mean_ci_cell(s["open catalog"]["new_item_share"]),
                    mean_ci_cell(s["open catalog"]["new_item_ctr"]),
                    mean_ci_cell(s["open catalog"]["warm_item_ctr"]),
                    f"{r['train_wall_s_per_seed']:.0f}",
                ]
            )
    share_table = []
    if shares:
        share_table = [
            "episodic_return as a share of the quality_aware yardstick's in the same shop",
            markdown_table(["agent", "arm", *shops], shares),
        ]
    return "\n\n".join(
        [
            "episodic_return (95% CI) in each shop",
            markdown_table(["agent", "arm", *shops], returns),
            *share_table,
            "new items: a catalog of new items only (cold start), and the open catalog (new and warm items)",
            markdown_table(
                [
                    "agent",
                    "arm",
                    "new only: new_item_ctr",
                    "new only: new_item_purchase_rate",
                    "new only: new_item_rating",
                    "open: new_item_share",
                    "open: new_item_ctr",
                    "open: warm_item_ctr",
                    "train s / seed",
                ],
                new_items,
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1500 training steps, 1024 evaluation sessions")
    parser.add_argument(
        "--agents", nargs="+", default=["dqn"], help=f"learning agents of the registry ({', '.join(AGENTS)})"
    )
    parser.add_argument("--arms", nargs="+", default=["content", "id_only"], choices=list(ARMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000, help="environment steps of training (x train users)")
    parser.add_argument("--train-users", type=int, default=256)
    parser.add_argument("--eval-users", type=int, default=2048)
    parser.add_argument("--content-dim", type=int, default=32)
    parser.add_argument("--content-noise", type=float, default=None, help="default: env.content_noise's default")
    parser.add_argument("--holdout-items", type=float, default=0.2)
    parser.add_argument(
        "--yardsticks", nargs="*", default=["myopic_oracle", "quality_aware"], help="privileged rules played too"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="AGENT.KEY=VALUE",
        help="hyperparameter overrides, e.g. --set dqn.id_dropout=0.5 dqn.weight_decay=1e-4",
    )
    parser.add_argument(
        "--env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="changes to the default shop for every arm, e.g. --env hype_quality_corr=0",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="bench_generalization.json")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_users = 1500, 1024
    env_overrides = {}
    for item in args.env:
        key, _, value = item.partition("=")
        if not key or not value:
            raise SystemExit(f"error: --env {item!r}: expected <env field>=<value>, e.g. hype_quality_corr=0")
        env_overrides[key] = yaml.safe_load(value)
    for name in args.agents:
        if name not in AGENTS or not agent_class(name).learns:
            learners = [n for n in AGENTS if agent_class(n).learns]
            raise SystemExit(
                f"error: --agents {name!r} is not a learning agent of the registry; choose from {learners}"
            )
    print(
        f"default shop{''.join(f' {k}={v}' for k, v in env_overrides.items())} with content_dim={args.content_dim}, "
        f"holdout_items={args.holdout_items}; {args.seeds} seeds, "
        f"{args.steps} steps x {args.train_users} users of training, {args.eval_users} evaluation sessions per seed"
    )
    results = run(
        tuple(args.agents),
        tuple(args.arms),
        args.seeds,
        args.steps,
        args.train_users,
        args.eval_users,
        args.device,
        content_dim=args.content_dim,
        content_noise=args.content_noise,
        holdout_items=args.holdout_items,
        overrides=_parse_overrides(args.set),
        env_overrides=env_overrides,
    )
    env = training_env("content", args.content_dim, args.content_noise, args.holdout_items, args.device, env_overrides)
    yardsticks = run_yardsticks(tuple(args.yardsticks), env, args.eval_users)
    print(format_tables(results, yardsticks))
    with open(args.out, "w") as f:
        json.dump({"config": vars(args), "results": results, "yardsticks": yardsticks}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
