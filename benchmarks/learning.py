"""Learning benchmark on the default shop: DQN against the baselines, over several seeds.

    python benchmarks/learning.py --quick --out bench_learning.json
    python benchmarks/learning.py --seeds 5 --steps 3000

For each training seed, every learning policy trains on its own shop (same catalog),
then all policies are evaluated on the same fixed evaluation users (common random
numbers), one full session per user. Prints a table (mean session return with a 95% CI
pooled over seeds x users, CTR, purchases per session, mean rating, training wall time,
env-steps/s) and writes JSON ``{"policies": {name: {...}}, "dqn_env_steps_per_s"}``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from omegaconf import OmegaConf

from rlrec.agents.baselines import MyopicAgent
from rlrec.config import BanditConfig, DQNConfig, MyopicConfig, PopularConfig, RandomConfig, env_preset
from rlrec.evaluation import SessionStats, mean_ci, run_sessions
from rlrec.sim.env import Shop
from rlrec.trainer import make_agent as build_agent
from rlrec.trainer import train_steps

AGENT_CONFIGS = {"random": RandomConfig, "popular": PopularConfig, "myopic_oracle": MyopicConfig,
                 "bandit": BanditConfig, "dqn": DQNConfig}
"""Each policy with the defaults of its ``conf/agent`` schema, as ``python train.py`` uses them."""


def make_agent(name: str, shop: Shop, seed: int):
    return build_agent(OmegaConf.structured(AGENT_CONFIGS[name]), shop, seed)


def run(seeds: int, steps: int, train_users: int, eval_users: int, device: str,
        policies: tuple[str, ...] = ("random", "popular", "bandit", "myopic_oracle", "dqn")) -> dict:
    results: dict[str, dict] = {}
    for name in policies:
        stats: list[SessionStats] = []
        wall, env_steps = 0.0, 0
        for seed in range(seeds):
            shop = Shop(env_preset("default", device=device, num_users=train_users, seed=0))
            shop.reset(seed=seed)
            agent = make_agent(name, shop, seed)
            if name in ("popular", "bandit", "dqn"):
                start = time.perf_counter()
                train_steps(shop, agent, steps)
                wall += time.perf_counter() - start
                env_steps += steps * train_users
            eval_shop = Shop(env_preset("default", device=device, num_users=eval_users, seed=0))
            if name == "myopic_oracle":
                agent = MyopicAgent(eval_shop)
            stats.append(run_sessions(eval_shop, lambda obs: agent.act(obs), seed=10_000))
        returns = torch.cat([s.session_return for s in stats])
        length = torch.cat([s.length for s in stats]).double()
        clicks = torch.cat([s.clicks for s in stats])
        purchases = torch.cat([s.purchases for s in stats])
        ratings = sum(float(s.rating_sum.sum()) for s in stats)
        results[name] = {
            "return_mean": mean_ci(returns)["mean"], "return_ci95": mean_ci(returns)["ci95"],
            "seed_means": [float(s.session_return.mean()) for s in stats],
            "ctr": float(clicks.sum() / length.sum()), "purchases_per_session": float(purchases.mean()),
            "mean_rating": ratings / max(float(purchases.sum()), 1.0),
            "train_wall_s": wall / seeds, "env_steps_per_s": env_steps / wall if wall > 0 else None,
        }
        r = results[name]
        sps = f"{r['env_steps_per_s']:,.0f}" if r["env_steps_per_s"] else "-"
        print(f"| {name} | {r['return_mean']:.2f} ± {r['return_ci95']:.2f} | {r['ctr']:.3f} | "
              f"{r['purchases_per_session']:.2f} | {r['mean_rating']:.2f} | {r['train_wall_s']:.0f} | {sps} |",
              flush=True)
    return results


def run_sb3_peer(steps: int, train_users: int, eval_users: int, seed: int = 0) -> dict:
    """Stable-Baselines3's DQN against ours on the default shop with one item per step.

    SB3's DQN needs a ``Discrete`` action, so both train on ``slate_size = 1``. Ours trains
    for ``steps`` batched steps; SB3 gets the same wall-clock time through the Gymnasium
    adapter (8 single-user envs, its ``MultiInputPolicy``). Both are evaluated on the same
    users.
    """
    import numpy as np
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from rlrec.sim.gym import ShopEnv

    env_cfg = env_preset("default", device="cpu", slate_size=1, seed=0)
    shop = Shop(env_cfg, num_users=train_users)
    shop.reset(seed=seed)
    ours = make_agent("dqn", shop, seed)
    start = time.perf_counter()
    train_steps(shop, ours, steps)
    budget = time.perf_counter() - start
    ours_sps = steps * train_users / budget

    class StopAfter(BaseCallback):
        def _on_step(self) -> bool:
            return time.perf_counter() - self.start < budget

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()

    venv = make_vec_env(ShopEnv, n_envs=8, seed=seed, env_kwargs={"env_cfg": env_cfg})
    model = DQN("MultiInputPolicy", venv, learning_starts=5000, buffer_size=200_000, batch_size=512,
                exploration_fraction=0.2, target_update_interval=250, gamma=0.95, seed=seed, verbose=0, device="cpu")
    callback = StopAfter()
    start = time.perf_counter()
    model.learn(total_timesteps=10**9, callback=callback)
    sb3_time = time.perf_counter() - start
    sb3_sps = model.num_timesteps / sb3_time

    class SB3Agent:
        def act(self, obs, explore=False):
            actions, _ = model.predict({k: v.cpu().numpy() for k, v in obs.items()}, deterministic=True)
            return torch.as_tensor(np.asarray(actions), dtype=torch.long).reshape(-1, 1)

    eval_shop = Shop(env_cfg, num_users=eval_users)
    results = {}
    for name, agent in (("rlrec_dqn", ours), ("sb3_dqn", SB3Agent())):
        returns = run_sessions(eval_shop, agent.act, seed=10_000).session_return
        results[name] = mean_ci(returns)
    print(f"peer (slate_size=1, {budget:.0f} s of training each): rlrec DQN {ours_sps:,.0f} env-steps/s, "
          f"return {results['rlrec_dqn']['mean']:.2f} ± {results['rlrec_dqn']['ci95']:.2f}; "
          f"SB3 DQN {sb3_sps:,.0f} env-steps/s ({model.num_timesteps:,} steps), "
          f"return {results['sb3_dqn']['mean']:.2f} ± {results['sb3_dqn']['ci95']:.2f}; "
          f"speed ratio {ours_sps / sb3_sps:.1f}x")
    return {"name": "sb3", "env_steps_per_s": sb3_sps, "return_mean": results["sb3_dqn"]["mean"],
            "return_ci95": results["sb3_dqn"]["ci95"], "timesteps": model.num_timesteps, "wall_s": sb3_time,
            "rlrec": {"env_steps_per_s": ours_sps, "return_mean": results["rlrec_dqn"]["mean"],
                      "return_ci95": results["rlrec_dqn"]["ci95"], "wall_s": budget},
            "note": "both on the default shop with slate_size=1 (SB3's DQN needs a Discrete action)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 seeds, 1500 training steps: a few minutes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000, help="environment steps of training (x train users)")
    parser.add_argument("--train-users", type=int, default=256)
    parser.add_argument("--eval-users", type=int, default=2048)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="bench_learning.json")
    parser.add_argument("--peer", choices=["sb3"], default=None,
                        help="also train Stable-Baselines3's DQN for the same wall-clock time (pip install stable-baselines3)")
    parser.add_argument("--skip-main", action="store_true", help="with --peer: only the peer comparison")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_users = 1500, 1024
    print(f"default shop, {args.seeds} seeds, {args.steps} steps x {args.train_users} users of training, "
          f"{args.eval_users} evaluation sessions per seed")
    print("| policy | session return (95% CI) | CTR | purchases/session | mean rating | train s/seed | env-steps/s |")
    print("|---|---|---|---|---|---|---|")
    out: dict = {"config": vars(args)}
    if not args.skip_main:
        results = run(args.seeds, args.steps, args.train_users, args.eval_users, args.device)
        out.update(policies=results, dqn_env_steps_per_s=results["dqn"]["env_steps_per_s"])
    if args.peer == "sb3":
        out["peer"] = run_sb3_peer(args.steps, args.train_users, args.eval_users)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
