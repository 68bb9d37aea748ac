"""rlrec's DQN against Stable-Baselines3's DQN, for the same wall-clock time.

    pip install stable-baselines3   # or: pip install -e ".[bench]"
    python benchmarks/peer_sb3.py --steps 3000 --out bench_peer.json

SB3's DQN needs a ``Discrete`` action, so both train on the default shop with
``slate_size = 1``. Ours trains for ``--steps`` batched steps; SB3 gets the same wall-clock
time through the Gymnasium adapter (8 single-user envs, its ``MultiInputPolicy``). Both are
evaluated on the same users.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from rlrec.agents import AGENTS, build_agent
from rlrec.agents.base import AgentSpec
from rlrec.config import env_preset
from rlrec.eval.rollout import mean_ci, run_sessions
from rlrec.sim.env import Shop
from rlrec.train.loop import train_steps


def run_sb3_peer(steps: int, train_users: int, eval_users: int, seed: int = 0) -> dict:
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from rlrec.sim.gym import ShopEnv

    env_cfg = env_preset("default", device="cpu", slate_size=1, seed=0)
    shop = Shop(env_cfg, num_users=train_users)
    shop.reset(seed=seed)
    ours = build_agent({"_target_": AGENTS["dqn"]}, AgentSpec.from_shop(shop), seed=seed, device="cpu")
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
    model = DQN(
        "MultiInputPolicy",
        venv,
        learning_starts=5000,
        buffer_size=200_000,
        batch_size=512,
        exploration_fraction=0.2,
        target_update_interval=250,
        gamma=0.95,
        seed=seed,
        verbose=0,
        device="cpu",
    )
    start = time.perf_counter()
    model.learn(total_timesteps=10**9, callback=StopAfter())
    sb3_time = time.perf_counter() - start
    sb3_sps = model.num_timesteps / sb3_time

    class SB3Policy:
        def act(self, obs, explore=False):
            actions, _ = model.predict({k: v.cpu().numpy() for k, v in obs.items()}, deterministic=True)
            return torch.as_tensor(np.asarray(actions), dtype=torch.long).reshape(-1, 1)

    eval_shop = Shop(env_cfg, num_users=eval_users)
    results = {
        name: mean_ci(run_sessions(eval_shop, policy, seed=10_000).session_return)
        for name, policy in (("rlrec_dqn", ours), ("sb3_dqn", SB3Policy()))
    }
    print(
        f"peer (slate_size=1, {budget:.0f} s of training each): rlrec DQN {ours_sps:,.0f} env-steps/s, "
        f"return {results['rlrec_dqn']['mean']:.2f} ± {results['rlrec_dqn']['ci95']:.2f}; "
        f"SB3 DQN {sb3_sps:,.0f} env-steps/s ({model.num_timesteps:,} steps), "
        f"return {results['sb3_dqn']['mean']:.2f} ± {results['sb3_dqn']['ci95']:.2f}; "
        f"speed ratio {ours_sps / sb3_sps:.1f}x"
    )
    return {
        "name": "sb3",
        "env_steps_per_s": sb3_sps,
        "return_mean": results["sb3_dqn"]["mean"],
        "return_ci95": results["sb3_dqn"]["ci95"],
        "timesteps": model.num_timesteps,
        "wall_s": sb3_time,
        "rlrec": {
            "env_steps_per_s": ours_sps,
            "return_mean": results["rlrec_dqn"]["mean"],
            "return_ci95": results["rlrec_dqn"]["ci95"],
            "wall_s": budget,
        },
        "note": "both on the default shop with slate_size=1 (SB3's DQN needs a Discrete action)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="environment steps of rlrec's training")
    parser.add_argument("--train-users", type=int, default=256)
    parser.add_argument("--eval-users", type=int, default=2048)
    parser.add_argument("--out", default="bench_peer.json")
    args = parser.parse_args()
    result = run_sb3_peer(args.steps, args.train_users, args.eval_users)
    with open(args.out, "w") as f:
        json.dump({"config": vars(args), "peer": result}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
