"""Learning benchmark on the default shop: the agents against the yardsticks, over several seeds.

    python benchmarks/learning.py --quick --out bench_learning.json
    python benchmarks/learning.py --seeds 3 --steps 3000
    python benchmarks/learning.py --slate-size 1

For each training seed, every learning agent trains on its own shop (same catalog, the
default shop's config, ``--slate-size`` aside), then every policy is evaluated on the same
fixed evaluation users (common random numbers), one full session per user. Agents are
built from the ``conf/agent`` schemas (their defaults, as ``python train.py agent=<name>``
uses them) plus ``--set name.key=value`` overrides. The privileged yardsticks
(``myopic_oracle``, ``quality_aware``) read the shop's hidden state.

Prints a table and writes JSON ``{"config", "policies": {name: {"return_mean",
"return_ci95", "ratio_to_quality_aware", "seed_means", "train_wall_s_per_seed", <every
metric of rlrec.eval.rollout.METRICS>: {"mean", "ci95", "n"}}}}``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rlrec.agents import AGENTS, agent_class, build_agent
from rlrec.agents.base import AgentSpec
from rlrec.config import env_preset
from rlrec.eval.output import markdown_table
from rlrec.eval.rollout import SessionStats, make_baselines, run_sessions
from rlrec.sim.env import Shop
from rlrec.sim.privileged import YARDSTICKS
from rlrec.train.loop import train_steps

DEFAULT_POLICIES = ("random", "popular", "bandit", "myopic_oracle", "quality_aware", "dqn")
EVAL_SEED = 10_000


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
    steps: int,
    train_users: int,
    eval_users: int,
    device: str,
    policies: tuple[str, ...] = DEFAULT_POLICIES,
    slate_size: int | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    env_steps: dict[str, int] | None = None,
    quiet: bool = False,
) -> dict[str, dict[str, Any]]:
    """Train and evaluate ``policies``; return ``{name: results}`` (see the module docstring).

    ``env_steps`` gives an agent its own number of training steps (default ``steps``).
    """
    shape = {} if slate_size is None else {"slate_size": slate_size}
    overrides, env_steps = overrides or {}, env_steps or {}
    results: dict[str, dict[str, Any]] = {}
    for name in policies:
        stats: list[SessionStats] = []
        wall = 0.0
        for seed in range(seeds):
            eval_shop = Shop(env_preset("default", device=device, num_users=eval_users, seed=0, **shape))
            if name in YARDSTICKS or (name in AGENTS and not agent_class(name).learns):
                policy = make_baselines([name], eval_shop, seed)[name]
            else:
                shop = Shop(env_preset("default", device=device, num_users=train_users, seed=0, **shape))
                shop.reset(seed=seed)
                policy = build_agent(
                    {"_target_": AGENTS[name], **overrides.get(name, {})},
                    AgentSpec.from_shop(shop),
                    seed=seed,
                    device=str(shop.device),
                )
                start = time.perf_counter()
                train_steps(shop, policy, env_steps.get(name, steps))
                wall += time.perf_counter() - start
            stats.append(run_sessions(eval_shop, policy, seed=EVAL_SEED))
        summary = SessionStats.concat(stats).summary()
        results[name] = {
            "return_mean": summary["episodic_return"]["mean"],
            "return_ci95": summary["episodic_return"]["ci95"],
            "seed_means": [float(s.session_return.mean()) for s in stats],
            "train_wall_s_per_seed": wall / seeds,
            "train_user_steps": env_steps.get(name, steps) * train_users,
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
    parser.add_argument("--quick", action="store_true", help="1500 training steps, 1024 evaluation sessions")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000, help="environment steps of training (x train users)")
    parser.add_argument("--train-users", type=int, default=256)
    parser.add_argument("--eval-users", type=int, default=2048)
    parser.add_argument("--slate-size", type=int, default=None, help="K (default: the default shop's, 5)")
    parser.add_argument(
        "--policies",
        nargs="+",
        default=list(DEFAULT_POLICIES),
        help=f"agents ({', '.join(AGENTS)}) and yardsticks ({', '.join(YARDSTICKS)})",
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
        args.steps, args.eval_users = 1500, 1024
    print(
        f"default shop{f' with slate_size={args.slate_size}' if args.slate_size else ''}, {args.seeds} seeds, "
        f"{args.steps} steps x {args.train_users} users of training, {args.eval_users} evaluation sessions per seed"
    )
    results = run(
        args.seeds,
        args.steps,
        args.train_users,
        args.eval_users,
        args.device,
        tuple(args.policies),
        args.slate_size,
        _parse_overrides(args.set),
    )
    print(format_table(results))
    with open(args.out, "w") as f:
        json.dump({"config": vars(args), "policies": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
