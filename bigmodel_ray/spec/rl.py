"""The `rl` section (kind rl): an environment, an RLlib algorithm and its main settings
(bigmodel_ray/rl reads it). Everything a run needs besides `seed`, `storage`, `checkpoint`,
`failure` and `search` is here: RL has no data or model sections."""

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from bigmodel_ray.spec.common import KindSection, Section

MAX_STEPS = 10**10
# DQN samples in fragments of this many env steps, then updates (rl/algorithm.py)
DQN_FRAGMENT = 32
Width = Annotated[int, Field(ge=1, le=65_536)]
# What an RL run reports per iteration, and a sweep of it may optimize
RL_METRICS = frozenset({"episode_return_mean", "eval_return_mean", "env_steps", "loss", "iteration_s"})


class DQNSpec(Section):
    """DQN (Rainbow-style options) on RLlib's new API stack."""
    replay_capacity: int = Field(50_000, ge=100, le=10**8, description="transitions kept in the replay buffer")
    prioritized: bool = Field(True, description="prioritized replay (alpha 0.6, beta 0.4)")
    target_update: int = Field(500, ge=1, le=10**7, description="env steps between target network updates")
    epsilon: list[tuple[Annotated[int, Field(ge=0, le=MAX_STEPS)], Annotated[float, Field(ge=0, le=1)]]] = Field(
        [(0, 1.0), (10_000, 0.02)], min_length=1, max_length=16,
        description="exploration schedule: [[env step, epsilon], ...], linear in between")
    double_q: bool = Field(True, description="double Q-learning")
    dueling: bool = Field(True, description="dueling heads (value + advantage)")
    n_step: int = Field(3, ge=1, le=100, description="n-step returns")
    learning_starts: int = Field(1000, ge=0, le=MAX_STEPS, description="env steps sampled before the first update")
    updates_per_step: float = Field(0.25, gt=0, le=64, description="gradient updates per env step sampled "
                                                                   "(RLlib's training_intensity / batch)")


class PPOSpec(Section):
    """PPO on RLlib's new API stack."""
    minibatch_size: int = Field(128, ge=1, le=1 << 20, description="env steps per SGD minibatch")
    epochs: int = Field(6, ge=1, le=1000, description="SGD passes over each train batch")
    clip: float = Field(0.2, gt=0, le=10, description="policy ratio clip")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    entropy: float = Field(0.0, ge=0, le=10, description="entropy bonus coefficient")
    vf_loss_coeff: float = Field(0.5, ge=0, le=100, description="value loss coefficient")


class RLSpec(KindSection):
    env: str = Field("CartPole-v1", max_length=200, description="a gymnasium environment id (discrete actions for dqn)")
    algorithm: Literal["dqn", "ppo"] = Field(description="the RLlib algorithm")
    env_steps: int = Field(100_000, ge=1, le=MAX_STEPS, description="stop after this many env steps sampled")
    stop_return: float | None = Field(None, ge=-1e9, le=1e9, description="also stop once a greedy evaluation "
                                                                        "returns at least this (mean over eval_episodes)")
    lr: float = Field(5e-4, gt=0, le=10, description="learning rate")
    gamma: float = Field(0.99, ge=0, le=1, description="discount")
    train_batch: int = Field(32, ge=1, le=1 << 20, description="dqn: transitions per update; ppo: env steps "
                                                              "sampled per iteration")
    hidden: list[Width] = Field([256], min_length=1, max_length=16, description="hidden layer widths")
    activation: Literal["relu", "tanh"] = Field("relu", description="hidden activation")
    env_runners: int = Field(0, ge=0, le=4096, description="sampling actors (0: sample in the learner's process)")
    envs_per_runner: int = Field(1, ge=1, le=1024, description="vectorized environments per runner")
    cpus_per_runner: float = Field(1.0, gt=0, le=4096, description="CPUs each env runner actor reserves")
    eval_every: int = Field(5, ge=1, le=10**6, description="greedy evaluation every N iterations (and at the end)")
    eval_episodes: int = Field(20, ge=1, le=10**5, description="episodes per evaluation")
    dqn: DQNSpec | None = Field(None, description="algorithm dqn: its settings (defaults if left out)")
    ppo: PPOSpec | None = Field(None, description="algorithm ppo: its settings (defaults if left out)")

    @model_validator(mode="after")
    def _one_algorithm(self):
        other = "ppo" if self.algorithm == "dqn" else "dqn"
        if getattr(self, other) is not None:
            raise ValueError(f"{other}: settings of another algorithm (algorithm is {self.algorithm})")
        if getattr(self, self.algorithm) is None:
            setattr(self, self.algorithm, DQNSpec() if self.algorithm == "dqn" else PPOSpec())
        return self

    @field_validator("env")
    @classmethod
    def _plain_id(cls, v):
        import re

        if not re.fullmatch(r"[A-Za-z0-9_./:-]+", v):
            raise ValueError("must be a gymnasium environment id such as CartPole-v1")
        return v

    unused: ClassVar[tuple[str, ...]] = ("train", "resources", "checkpoint.best", "checkpoint.evaluate")

    def supplies(self) -> frozenset[str]:
        return frozenset({"data", "model"})

    @property
    def iterations(self) -> int:
        """Iterations the env step budget takes: RLlib's DQN samples at least 1,000 env steps per
        iteration, in whole fragments from every runner (rl/algorithm.py), PPO its train batch."""
        per_iteration = self.train_batch
        if self.algorithm == "dqn":
            per_sample = max(DQN_FRAGMENT, self.dqn.n_step) * self.envs_per_runner * max(self.env_runners, 1)
            per_iteration = -(-1000 // per_sample) * per_sample
        return -(-self.env_steps // per_iteration)

    def complete(self, job) -> None:
        from bigmodel_ray.spec.train import CheckpointSpec, ResourcesSpec, TrainSpec

        given = [key for key, value in (("data", job.data), ("model", job.model)) if value is not None]
        # A resolved job (spec.yaml, a sweep's trial) holds the unused sections at their defaults.
        defaults = {"train": TrainSpec(), "resources": ResourcesSpec(), "checkpoint": CheckpointSpec()}
        for path in self.unused:
            section, _, field = path.partition(".")
            value, default = getattr(job, section), defaults[section]
            if field:
                value, default = getattr(value, field), getattr(default, field)
            if _plain(value) != _plain(default):
                given.append(path)
        if given:
            raise ValueError(f"{given[0]}: not for kind rl (its settings are all in rl: env, hidden, lr, ...)")
        # A sweep's schedulers count iterations as epochs (ASHA's max_t, finished or stopped)
        job.train = job.train.model_copy(update={"epochs": self.iterations})

    def trial_metrics(self, job) -> frozenset[str]:
        return RL_METRICS


def _plain(value):
    """A section's settings as data (the iteration count a job's train.epochs holds aside)."""
    return value.model_dump(exclude={"epochs"}) if isinstance(value, Section) else value
