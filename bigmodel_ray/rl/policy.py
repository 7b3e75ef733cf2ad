"""A trained policy: read from the run's checkpoint, played greedily in its environment
(evaluation and `bigmodel-ray rollout`), exported to ONNX (`bigmodel-ray export`).

The network maps a batch of observations to one score per action: Q-values (DQN) or the action
distribution's inputs (PPO: logits for discrete actions, means then log-stds for continuous
ones). The greedy action is the best-scoring one, or the mean.
"""

import logging
from pathlib import Path

import numpy as np
import torch

MODULE_PATH = ("learner_group", "learner", "rl_module", "default_policy")


class PolicyScores(torch.nn.Module):
    """observations -> per-action scores, from an RLlib RLModule (a plain module: ONNX-exportable)."""

    def __init__(self, module, algorithm: str):
        super().__init__()
        self.module, self.algorithm = module, algorithm

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.algorithm == "dqn":
            return self.module.compute_q_values({"obs": obs})["qf_preds"]
        return self.module.forward_inference({"obs": obs})["action_dist_inputs"]


def check_private(checkpoint: Path) -> None:
    """An RLlib checkpoint holds pickles: read one only from folders this user owns and no one
    else can write (as a sweep's state, integrity.py)."""
    from bigmodel_ray import integrity

    integrity.check_private(checkpoint.parent.parent, [checkpoint.parent, checkpoint, *checkpoint.rglob("*.pkl")])


def load_scores(checkpoint: Path, algorithm: str) -> PolicyScores:
    """The policy network of an algorithm checkpoint. RLlib unpickles parts of it: the folder
    must be this user's own, writable by no one else (as a sweep's state, integrity.py)."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    checkpoint = Path(checkpoint)
    check_private(checkpoint)
    # RLlib's own loader calls an API it has deprecated and says so on every load: not the user's business.
    logging.getLogger("ray._common.deprecation").setLevel(logging.ERROR)
    module = RLModule.from_checkpoint(str(checkpoint.joinpath(*MODULE_PATH)))
    return PolicyScores(module, algorithm).eval()


def load_run_policy(run_dir: Path) -> tuple[PolicyScores, int]:
    """A finished rl run's final policy and its observation size (a one-line error otherwise)."""
    import json

    from bigmodel_ray import runs
    from bigmodel_ray.errors import SpecError

    result = json.loads((run_dir / runs.RESULT_FILE).read_text())
    if result.get("algorithm") not in ("dqn", "ppo") or not isinstance(result.get("env"), str):
        raise SpecError(f"{run_dir}: not a finished rl run (result.json has no algorithm and env)")
    return load_scores(runs.result_checkpoint(run_dir), result["algorithm"]), observation_size(result["env"])


def greedy_action(scores: torch.Tensor, action_space):
    import gymnasium as gym

    if isinstance(action_space, gym.spaces.Discrete):
        return int(scores.argmax())
    mean = scores[: scores.shape[0] // 2].numpy()
    return np.clip(mean, action_space.low, action_space.high).astype(action_space.dtype)


@torch.no_grad()
def play(policy: PolicyScores, env_id: str, episodes: int, seed: int) -> list[float]:
    """Returns of `episodes` greedy episodes, the i-th reset with seed + i (the same every call)."""
    import gymnasium as gym

    env, returns = gym.make(env_id), []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                scores = policy(torch.as_tensor(np.asarray(obs, dtype=np.float32)).unsqueeze(0))[0]
                obs, reward, terminated, truncated, _ = env.step(greedy_action(scores, env.action_space))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


def observation_size(env_id: str) -> int:
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        return int(np.prod(env.observation_space.shape))
    finally:
        env.close()
