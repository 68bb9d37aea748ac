"""Learning benchmark on the default shop: the agents against the yardsticks, over several seeds.

    python benchmarks/learning.py                      # every agent of the registry, K = 5, 3 seeds
    python benchmarks/learning.py --slate-size 1       # K = 1
    python benchmarks/learning.py --quick              # half of every training budget
    python benchmarks/learning.py --policies quality_aware slateq --set slateq.gamma=0.9

The rows are the yardsticks (``rlrec.sim.privileged.YARDSTICKS``: ``myopic_oracle``, ``quality_aware``
read the shop's hidden state) and every agent of the registry (``rlrec.agents.AGENTS``) that can serve
the default shop, so a newly registered agent is a row without editing this file. For each
training seed, every learning agent trains on its own shop (same catalog, the default shop's
config, ``--slate-size`` aside), then every policy is evaluated on the same fixed evaluation users
(common random numbers), one full session per user.

Training budgets. Each agent's budget is its ``conf/experiment/learn_<agent>.yaml``: users per
step (``env.num_users``), environment steps (``trainer.env_steps``) and hyperparameters set there
(``agent:``), on top of the agent's defaults; ``python train.py experiment=learn_<agent>`` trains one
seed of the same. An agent without that file trains ``--steps`` x ``--train-users`` with its
defaults. ``--steps`` / ``--train-users`` given on the command line replace every agent's budget, its
settings included (the agents' defaults, as ``python train.py agent=<name>``); ``--set
name.key=value`` overrides a hyperparameter.

Prints a table and writes JSON ``{"config", "policies": {name: {"return_mean", "return_ci95",
"ratio_to_quality_aware", "seed_means", "train_wall_s_per_seed", "train_wall_s" (per seed),
"train_user_steps", <every metric of rlrec.eval.rollout.METRICS>: {"mean", "ci95", "n"}}}}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rlrec.agents import AGENTS, agent_class, build_agent
from rlrec.agents.base import AgentSpec
from rlrec.config import ConfigError, env_preset
from rlrec.eval.output import markdown_table
from rlrec.eval.rollout import SessionStats, make_baselines, run_sessions
from rlrec.sim.env import Shop
from rlrec.sim.privileged import YARDSTICKS
from rlrec.train.loop import train_steps

EVAL_SEED = 10_000
BUDGETS = Path(__file__).resolve().parent.parent / "conf" / "experiment"
DEFAULT_STEPS, DEFAULT_TRAIN_USERS = 3000, 256  # the budget of an agent without a learn_<agent>.yaml


def default_policies(slate_size: int | None = None) -> tuple[str, ...]:
    """The yardsticks, then every registered agent that can serve the default shop (``slate_size`` aside)."""
    shape = {} if slate_size is None else {"slate_size": slate_size}
    spec = AgentSpec.from_shop(Shop(env_preset("default", device="cpu", num_users=8, **shape)))
    names = []
    for name in AGENTS:
        try:  # check_spec runs in the constructor, before anything is allocated
            agent_class(name)(spec, device="cpu", **budget(name)[2])
        except ConfigError as error:  # e.g. tabular_q needs an enumerable shop
            print(f"(no row for {name}: {error})")
            continue
        names.append(name)
    return (*YARDSTICKS, *names)


def budget(name: str, steps: int | None = None, train_users: int | None = None) -> tuple[int, int, dict[str, Any]]:
    """``(train_users, env_steps, hyperparameters)`` of agent ``name`` (see the module docstring)."""
    import yaml

    path = BUDGETS / f"learn_{name}.yaml"
    cfg = yaml.safe_load(path.read_text()) if path.exists() else {}
    if steps is not None or train_users is not None:  # the command line replaces the whole budget
        cfg = {}
    users = (cfg.get("env") or {}).get("num_users", DEFAULT_TRAIN_USERS)
    env_steps = (cfg.get("trainer") or {}).get("env_steps", DEFAULT_STEPS)
    return (
        users if train_users is None else train_users,
        env_steps if steps is None else steps,
        dict(cfg.get("agent") or {}),
    )


def _parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["dqn.gamma=0.99", ...]`` -> ``{"dqn": {"gamma": 0.99}}`` (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, value = item.partition("=")
        name, _, field = key.partition(".")
        if not field or not value:
            raise SystemExit(f"error: --set {item!r}: expected <agent>.<hyperparameter>=<value>, e.g. dqn.gamma=0.99")
        out.setdefault(name, {})[field] = yaml.safe_load(value)
    return out


def run(
    seeds: int,
    steps: int | None,
    train_users: int | None,
    eval_users: int,
    device: str,
    policies: tuple[str, ...] | None = None,
    slate_size: int | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    budget_scale: float = 1.0,
    quiet: bool = False,
    first_seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Train and evaluate ``policies`` (default :func:`default_policies`); return ``{name: results}``.

    ``steps`` / ``train_users`` (None: each agent's :func:`budget`) replace every agent's budget;
    ``budget_scale`` multiplies every agent's environment steps (``--quick``: 0.5). Training seeds
    are ``first_seed .. first_seed + seeds - 1``.
    """
    shape = {} if slate_size is None else {"slate_size": slate_size}
    overrides = overrides or {}
    policies = default_policies(slate_size) if policies is None else policies
    results: dict[str, dict[str, Any]] = {}
    for name in policies:
        stats: list[SessionStats] = []
        walls: list[float] = []
        users, env_steps, hyperparameters = budget(name, steps, train_users)
        env_steps = max(1, round(env_steps * budget_scale))
        for seed in range(first_seed, first_seed + seeds):
            eval_shop = Shop(env_preset("default", device=device, num_users=eval_users, seed=0, **shape))
            if name in YARDSTICKS or (name in AGENTS and not agent_class(name).learns):
                policy = make_baselines([name], eval_shop, seed)[name]
            else:
                shop = Shop(env_preset("default", device=device, num_users=users, seed=0, **shape))
                shop.reset(seed=seed)
                policy = build_agent(
                    {"_target_": AGENTS[name], **hyperparameters, **overrides.get(name, {})},
                    AgentSpec.from_shop(shop),
                    seed=seed,
                    device=str(shop.device),
                )
                start = time.perf_counter()
                train_steps(shop, policy, env_steps)
                walls.append(time.perf_counter() - start)
            stats.append(run_sessions(eval_shop, policy, seed=EVAL_SEED))
        summary = SessionStats.concat(stats).summary()
        results[name] = {
            "return_mean": summary["episodic_return"]["mean"],
            "return_ci95": summary["episodic_return"]["ci95"],
            "seed_means": [float(s.session_return.mean()) for s in stats],
            "train_wall_s_per_seed": sum(walls) / seeds,
            "train_wall_s": walls,  # wall-clock seconds of training, seed by seed (empty: nothing to train)
            "train_user_steps": env_steps * users if walls else 0,
            **summary,
        }
        if not quiet:
            r = results[name]
            seed_means = ", ".join(f"{m:.2f}" for m in r["seed_means"])
            print(
                f"{name}: {r['return_mean']:.2f} ± {r['return_ci95']:.2f} (seeds {seed_means}; "
                f"{r['train_wall_s_per_seed']:.0f} s of training per seed)",
                flush=True,
            )
    if "quality_aware" in results:
        for r in results.values():
            r["ratio_to_quality_aware"] = r["return_mean"] / results["quality_aware"]["return_mean"]
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, r in results.items():
        ratio = f"{r['ratio_to_quality_aware']:.2f}" if "ratio_to_quality_aware" in r else "-"
        wall = f"{r['train_wall_s_per_seed']:.0f}" if r["train_wall_s_per_seed"] else "-"
        rows.append(
            [
                name,
                f"{r['return_mean']:.2f} ± {r['return_ci95']:.2f}",
                ratio,
                f"{r['ctr']['mean']:.3f}",
                f"{r['purchases_per_session']['mean']:.2f}",
                f"{r['avg_rating']['mean']:.2f}",
                f"{r['episode_length']['mean']:.1f}",
                wall,
            ]
        )
    return markdown_table(
        [
            "policy",
            "episodic_return (95% CI)",
            "ratio_to_quality_aware",
            "ctr",
            "purchases_per_session",
            "avg_rating",
            "episode_length",
            "train s / seed",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="half of every training budget, 1024 evaluation sessions")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="training seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"environment steps of training for every agent (default: each agent's budget, else {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--train-users",
        type=int,
        default=None,
        help=f"users per training step for every agent (default: each agent's budget, else {DEFAULT_TRAIN_USERS})",
    )
    parser.add_argument("--eval-users", type=int, default=4096)
    parser.add_argument("--slate-size", type=int, default=None, help="K (default: the default shop's, 5)")
    parser.add_argument(
        "--policies",
        nargs="+",
        default=None,
        help=f"agents ({', '.join(AGENTS)}) and yardsticks ({', '.join(YARDSTICKS)}); default: all that fit the shop",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="AGENT.KEY=VALUE",
        help="hyperparameter overrides, e.g. --set dqn.gamma=0.99 dqn.n_step=3",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="bench_learning.json")
    args = parser.parse_args()
    if args.quick:
        args.eval_users = 1024
    scale = 0.5 if args.quick else 1.0
    print(
        f"default shop{f' with slate_size={args.slate_size}' if args.slate_size else ''}, {args.seeds} seeds, "
        f"{args.eval_users} evaluation sessions per seed, training budgets: "
        + (
            f"{args.steps or 'budget'} steps x {args.train_users or 'budget'} users"
            if args.steps or args.train_users
            else "conf/experiment/learn_<agent>.yaml"
        )
        + (" x 0.5 (--quick)" if args.quick else "")
    )
    results = run(
        args.seeds,
        args.steps,
        args.train_users,
        args.eval_users,
        args.device,
        None if args.policies is None else tuple(args.policies),
        args.slate_size,
        _parse_overrides(args.set),
        budget_scale=scale,
        first_seed=args.first_seed,
    )
    print(format_table(results))
    with open(args.out, "w") as f:
        json.dump({"config": vars(args), "policies": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
