"""An RLlib AlgorithmConfig from a job's `rl` section (new API stack, torch)."""

from bigmodel_ray.errors import SpecError
from bigmodel_ray.spec.rl import DQN_FRAGMENT


def check_env(env_id: str, algorithm: str, where: str) -> None:
    """The environment exists and suits the algorithm (DQN needs discrete actions), in one line."""
    import gymnasium as gym

    try:
        env = gym.make(env_id)
    except Exception as e:       # gymnasium's own errors: unknown id, missing extra
        raise SpecError(f"{where}: rl.env: {env_id!r} cannot be made ({type(e).__name__}: {str(e)[:160]})") from None
    try:
        if algorithm == "dqn" and not isinstance(env.action_space, gym.spaces.Discrete):
            raise SpecError(f"{where}: rl.algorithm: dqn needs discrete actions; {env_id} has {env.action_space}")
    finally:
        env.close()


def dqn_fragment(rl) -> int:
    return max(DQN_FRAGMENT, rl.dqn.n_step)


def algorithm_config(rl, seed: int):
    """The RLlib config of the `rl` section: network, algorithm settings, runners, seed.
    Evaluation is not RLlib's: loop.py plays the greedy policy itself (policy.py)."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    if rl.algorithm == "dqn":
        from ray.rllib.algorithms.dqn import DQNConfig

        d = rl.dqn
        # Sampled in fragments of DQN_FRAGMENT steps, then updated updates_per_step x fragment
        # times (RLlib's training_intensity counts transitions trained on per transition
        # sampled): each sampling call costs ~100 ms in RLlib, fragments of 4 were 5x slower.
        fragment = dqn_fragment(rl)
        config = DQNConfig().training(
            lr=rl.lr, gamma=rl.gamma, train_batch_size_per_learner=rl.train_batch, n_step=d.n_step,
            double_q=d.double_q, dueling=d.dueling, num_atoms=1, noisy=False,
            epsilon=[list(p) for p in d.epsilon], target_network_update_freq=d.target_update,
            num_steps_sampled_before_learning_starts=d.learning_starts,
            training_intensity=d.updates_per_step * rl.train_batch,
            replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer" if d.prioritized else "EpisodeReplayBuffer",
                                  "capacity": d.replay_capacity,
                                  **({"alpha": 0.6, "beta": 0.4} if d.prioritized else {})})
        model = DefaultModelConfig(fcnet_hiddens=list(rl.hidden), fcnet_activation=rl.activation,
                                   head_fcnet_hiddens=[list(rl.hidden)[-1]] if d.dueling else [])
    else:
        from ray.rllib.algorithms.ppo import PPOConfig

        p = rl.ppo
        fragment = "auto"
        model = DefaultModelConfig(fcnet_hiddens=list(rl.hidden), fcnet_activation=rl.activation, vf_share_layers=False)
        config = PPOConfig().training(
            lr=rl.lr, gamma=rl.gamma, train_batch_size_per_learner=rl.train_batch, minibatch_size=p.minibatch_size,
            num_epochs=p.epochs, clip_param=p.clip, lambda_=p.gae_lambda, entropy_coeff=p.entropy,
            vf_loss_coeff=p.vf_loss_coeff)
    return (config.environment(rl.env)
            .env_runners(num_env_runners=rl.env_runners, num_envs_per_env_runner=rl.envs_per_runner,
                         rollout_fragment_length=fragment, num_cpus_per_env_runner=rl.cpus_per_runner)
            .rl_module(model_config=model)
            .debugging(seed=seed, log_level="ERROR"))
