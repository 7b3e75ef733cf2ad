"""Reinforcement learning on RLlib: bad settings in one line, a PPO run killed mid-way and
resumed at the right iteration, its policy replayed and exported; a 2-trial sweep."""

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
import yaml
from conftest import ROOT, kill_run

from bigmodel_ray.cli import main

# PPO on CartPole, small: 500 env steps an iteration, 6 iterations
TINY_PPO = {"env": "CartPole-v1", "algorithm": "ppo", "env_steps": 3000, "train_batch": 500, "hidden": [32],
            "ppo": {"minibatch_size": 100, "epochs": 2}, "eval_every": 3, "eval_episodes": 3}


def _job(tmp_path, name="ppo", **rl):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "kind": "rl", "seed": 0, "storage": str(tmp_path / "runs"),
                                    "rl": {**TINY_PPO, **rl}, "checkpoint": {"every": 1, "keep": 2}}))
    return path


@pytest.mark.parametrize("change, message", [
    ({"algorithm": "a2c"}, "rl.algorithm: must be 'dqn' or 'ppo'"),
    ({"dqn": {"n_step": 3}}, "rl.dqn: settings of another algorithm (algorithm is ppo)"),
    ({"lr": -1}, "rl.lr: must be > 0"),
    ({"ppo": {"clip": 0}}, "rl.ppo.clip: must be > 0"),
    ({"env": "Cart Pole"}, "rl.env: must be a gymnasium environment id"),
    ({"hidden": []}, "rl.hidden"),
])
def test_bad_rl_settings_fail_in_one_line(tmp_path, capsys, change, message):
    path = _job(tmp_path, **change)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(path) in err, err


def test_an_rl_job_has_no_train_or_data_section(tmp_path, capsys):
    path = _job(tmp_path)
    job = yaml.safe_load(path.read_text())
    assert main(["validate", str(path)]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)       # only what an rl run reads
    assert not {"train", "resources", "data", "model"} & set(resolved) and "dqn" not in resolved["rl"]
    assert set(resolved["checkpoint"]) == {"every", "keep"}
    path.write_text(yaml.safe_dump(resolved))               # the resolved job is a job, unchanged
    assert main(["validate", str(path)]) == 0 and yaml.safe_load(capsys.readouterr().out) == resolved
    for section, value, key in [("train", {"batch_size": 8}, "train"),
                                ("checkpoint", {"evaluate": "last"}, "checkpoint.evaluate")]:
        path.write_text(yaml.safe_dump({**job, section: value}))
        assert main(["validate", str(path)]) == 2
        assert f"{key}: not for kind rl" in capsys.readouterr().err


def test_an_unknown_environment_fails_in_one_line_before_anything_is_written(ray_cluster, tmp_path, capsys):
    path = _job(tmp_path, env="NoSuchEnv-v0")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rl.env: 'NoSuchEnv-v0' cannot be made" in err, err
    assert not (tmp_path / "runs" / "ppo").exists()


def test_a_killed_rl_run_resumes_at_its_last_checkpoint_then_rolls_out_and_exports(ray_cluster, tmp_path, capsys):
    path = _job(tmp_path)
    run = tmp_path / "runs" / "ppo"
    ray_tmp = tempfile.mkdtemp(prefix="bmr-", dir="/tmp")       # the killed run's own Ray, found by this path
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    driver = subprocess.Popen([sys.executable, "-m", "bigmodel_ray", "run", str(path)], env=env, cwd=ROOT,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while len(list((run / "checkpoints").glob("iteration_*/iteration.json"))) < 1 or \
                len((run / "metrics.jsonl").read_text().splitlines()) < 2:
            assert driver.poll() is None and time.time() < deadline, "run ended before it could be killed"
            time.sleep(0.1)
    finally:
        kill_run(driver, ray_tmp)
    killed_at = len((run / "metrics.jsonl").read_text().splitlines())
    assert 2 <= killed_at < 6 and not (run / "result.json").exists()
    kept = max(json.loads(p.read_text())["epoch"] for p in run.glob("checkpoints/iteration_*/iteration.json"))

    capsys.readouterr()
    for command in ("rollout", "export"):           # an interrupted run: both say so, the same way
        assert main([command, str(run)]) == 2
    assert capsys.readouterr().err.count(f"{run}: the run has not finished") == 2
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"resuming from iteration_{kept:06d}" in out
    result = json.loads((run / "result.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6] and result["epochs"] == 6
    assert result["epochs_this_run"] == 6 - kept and result["env_steps"] == 3000
    assert [r["epoch"] for r in rows if "eval_return_mean" in r] == [1, 3, 6]
    assert result["eval_return_mean"] == rows[-1]["eval_return_mean"] > 9      # CartPole pays 1 a step
    assert (run / "curves.png").stat().st_size > 0 and len(list(run.glob("checkpoints/iteration_*"))) == 2

    assert main(["rollout", str(run), "--episodes", "3"]) == 0
    first = capsys.readouterr().out
    assert main(["rollout", str(run), "--episodes", "3"]) == 0
    assert capsys.readouterr().out == first and "3 greedy episodes" in first        # greedy: the same every time
    assert main(["export", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "argmax agreement 1.0000" in printed and (run / "policy.onnx").exists()


def test_a_two_trial_rl_sweep(ray_cluster, tmp_path):
    path = _job(tmp_path, name="ppo_sweep", env_steps=1000)
    job = yaml.safe_load(path.read_text())
    job["search"] = {"space": {"rl.lr": "grid([0.0003, 0.001])"}, "metric": "eval_return_mean", "trial_cpus": 1}
    path.write_text(yaml.safe_dump(job))
    assert main(["run", str(path)]) == 0
    result = json.loads((tmp_path / "runs" / "ppo_sweep" / "result.json").read_text())
    assert result["trials"] == 2 and result["best"]["eval_return_mean"] > 9, result


def _register_flaky(marker):
    """CartPole whose step raises once, at its 1,200th step in this process (in the third
    iteration of 500 steps), unless `marker` says it already did: a simulator that crashes."""
    import gymnasium as gym

    class Flaky(gym.Wrapper):
        steps = 0

        def step(self, action):
            Flaky.steps += 1
            if Flaky.steps == 1200 and not marker.exists():
                marker.write_text("failed once")
                raise RuntimeError("the simulator crashed")
            return self.env.step(action)

    gym.registry.pop("FlakyCartPole-v1", None)           # each test its own marker
    gym.register("FlakyCartPole-v1", entry_point=lambda **kw: Flaky(gym.make("CartPole-v1")))


@pytest.mark.parametrize("max_failures", [1, 0])
def test_a_failed_iteration_restarts_from_the_last_checkpoint(ray_cluster, tmp_path, capsys, max_failures):
    _register_flaky(tmp_path / "failed")
    path = _job(tmp_path, env="FlakyCartPole-v1", env_steps=2000)
    job = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**job, "failure": {"max_failures": max_failures}}))
    code = main(["run", str(path)])
    out, err = capsys.readouterr()
    if max_failures == 0:
        assert code == 1 and "iteration 3 failed: RuntimeError: the simulator crashed" in err.replace("\n", " "), err
        return
    assert code == 0, err
    assert "iteration 3 failed (RuntimeError: the simulator crashed); restarting from iteration_000002" in out, out
    rows = [json.loads(line) for line in (tmp_path / "runs" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_ctrl_c_says_which_iteration_the_run_stopped_after(tmp_path):
    from argparse import Namespace

    from bigmodel_ray.cli import _where_it_stopped
    from bigmodel_ray.spec import load_job

    job = _job(tmp_path)
    run = tmp_path / "runs" / "ppo"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i}) + "\n" for i in (1, 2, 3)))
    line = _where_it_stopped(load_job(job), Namespace(job=str(job), overrides=[], address=None))
    assert line == f"after iteration 3 in {run}: `bigmodel-ray run {job}` resumes it from its last checkpoint"
