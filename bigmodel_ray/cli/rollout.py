"""`bigmodel-ray rollout RUN --episodes 20`: play an rl run's final policy greedily and print the
returns (episode i starts from reset seed `--seed` + i: the same episodes every time)."""

from bigmodel_ray.errors import SpecError
from bigmodel_ray.storage import open_uri


def add_parser(sub) -> None:
    c = sub.add_parser("rollout", help="play an rl run's policy greedily and print the episode returns")
    c.add_argument("run", help="a finished rl run folder")
    c.add_argument("--episodes", type=int, default=20, help="episodes to play (default 20)")
    c.add_argument("--seed", type=int, default=0, help="reset seed of the first episode")


def run(args) -> int:
    import json
    import statistics

    from bigmodel_ray import runs
    from bigmodel_ray.rl.policy import load_run_policy, play

    folder = open_uri(args.run)
    if not runs.finished(folder):
        raise SpecError(runs.unfinished(folder) if (folder / runs.SPEC_FILE).exists()
                        else f"{folder}: not a run folder (no {runs.SPEC_FILE})")
    if not 1 <= args.episodes <= 100_000 or not 0 <= args.seed < 2**31:
        raise SpecError("--episodes must be in 1..100000 and --seed in 0..2^31-1")
    policy, _ = load_run_policy(folder)
    env = json.loads((folder / runs.RESULT_FILE).read_text())["env"]
    returns = play(policy, env, args.episodes, args.seed)
    print(f"{env}: {args.episodes} greedy episodes, returns {' '.join(f'{r:g}' for r in returns)}")
    print(f"mean {statistics.fmean(returns):.1f} +- {statistics.pstdev(returns):.1f}, min {min(returns):g}, "
          f"max {max(returns):g}")
    return 0
