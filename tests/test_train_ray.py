"""Real 2-worker Ray Train runs on the session's embedded Ray (tiny MNIST-1D jobs)."""

import json
import os
import signal
import threading
import time

import pytest
import torch

from bigmodel_ray import kinds
from bigmodel_ray.cli import main
from bigmodel_ray.models import build_model
from bigmodel_ray.spec import SpecError, load_job
from bigmodel_ray.train.state import read_state

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _epochs(run_dir):
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cli_run_ddp_end_to_end(tiny_job, tmp_path, capsys):
    job = tiny_job("e2e", checkpoint={"keep": 1})
    assert main(["run", str(job), "--set", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "effective global batch 128 x 1 accum x 2 workers = 256" in out
    assert "epoch 3/3" in out and "test_accuracy" in out

    run_dir = tmp_path / "runs" / "e2e"
    assert load_job(run_dir / "spec.yaml").train.epochs == 3             # the resolved spec, overrides applied
    assert _epochs(run_dir) == [1, 2, 3]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["epochs"] == 3 and result["test_count"] == 1000        # every test row, across both workers
    assert 0.3 < result["test_accuracy"] <= 1 and 0 < result["test_f1"] <= 1 and result["wall_s"] > 0
    # DDP kept the two ranks' parameters identical through every step.
    first, second = result["rank_param_checksums"]
    assert first == pytest.approx(second, rel=1e-12, abs=0)
    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 1                                          # keep: 1
    state = read_state(checkpoints[0])
    assert state["epoch"] == 3 and len(state["rng"]) == 2 and state["scheduler"]["last_epoch"] > 0
    assert not any(k.startswith("module.") for k in state["model"])      # plain keys, loadable anywhere
    # The state file alone rebuilds the trained model (what compress, export and predict rely on).
    meta = read_state(result["checkpoint"])["meta"]
    model = build_model(meta["model"]["name"], meta["input_shape"], meta["num_classes"], **meta["model"]["args"])
    model.load_state_dict(read_state(result["checkpoint"])["model"])
    assert model(torch.zeros(2, *meta["input_shape"])).shape == (2, 10)


def test_bf16_with_grad_accumulation_streaming(tiny_job):
    # in_memory: false streams the Ray Data shard every epoch instead of caching it (and once
    # more to count its classes for the balanced loss, summed across the two workers).
    spec = load_job(tiny_job("bf16", train={"precision": "bf16", "grad_accum": 2, "batch_size": 64,
                                            "class_weights": "balanced"},
                             data={"source": "mnist1d", "in_memory": False}))
    result = kinds.run(spec, "bf16.yaml", say=lambda _: None)
    assert result["test_accuracy"] > 0.25                                  # chance is 0.10
    assert result["rank_param_checksums"][0] == pytest.approx(result["rank_param_checksums"][1], rel=1e-12)


def test_fsdp2_on_cpu_saves_full_weights(tiny_job, tmp_path):
    spec = load_job(tiny_job("fsdp", train={"strategy": "fsdp"}))
    result = kinds.run(spec, "fsdp.yaml", say=lambda _: None)
    assert result["test_accuracy"] > 0.25 and result["test_count"] == 1000
    state = read_state(result["checkpoint"])
    reference = build_model(spec.model.name, (1, 40), 10, **spec.model.args).state_dict()
    assert {k: v.shape for k, v in state["model"].items()} == {k: v.shape for k, v in reference.items()}


def test_rerun_resumes_at_the_next_epoch(tiny_job, tmp_path):
    job = tiny_job("resume")
    first = kinds.run(load_job(job), "resume.yaml", say=lambda _: None)
    assert first["resumed_from_epoch"] == 0
    # Same name and storage: continues after epoch 2 instead of starting over.
    second = kinds.run(load_job(job, ["train.epochs=3"]), "resume.yaml", say=lambda _: None)
    assert second["resumed_from_epoch"] == 2 and second["epochs_this_run"] == 1 and second["epochs"] == 3
    assert _epochs(tmp_path / "runs" / "resume") == [1, 2, 3]
    # Fewer epochs than the run has trained would train nothing yet relabel the run: refused, run untouched.
    run_files = {p.name: p.read_bytes() for p in (tmp_path / "runs" / "resume").glob("*.*") if p.is_file()}
    with pytest.raises(SpecError, match=r"train.epochs: 2 is fewer than the 3 epochs .*--set name="):
        kinds.run(load_job(job, ["train.epochs=2", "train.precision=bf16"]), "resume.yaml", say=print)
    assert run_files == {p.name: p.read_bytes() for p in (tmp_path / "runs" / "resume").glob("*.*") if p.is_file()}


def test_killed_worker_is_replaced_and_training_continues(tiny_job, tmp_path):
    spec = load_job(tiny_job("sigkill", train={"epochs": 8, "batch_size": 32}, failure={"max_failures": 1}))
    metrics = tmp_path / "runs" / "sigkill" / "metrics.jsonl"
    killed = []

    def kill_a_worker_after_epoch_2():
        from ray.util.state import list_actors

        from bigmodel_ray import runtime
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                workers = list_actors(address=runtime.STATE_API,
                                      filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
                if workers:
                    os.kill(workers[-1]["pid"], signal.SIGKILL)
                    killed.append(workers[-1]["pid"])
            time.sleep(0.1)

    killer = threading.Thread(target=kill_a_worker_after_epoch_2, daemon=True)
    killer.start()
    result = kinds.run(spec, "sigkill.yaml", say=lambda _: None)
    killer.join()
    assert killed, "the worker was never killed"
    assert result["resumed_from_epoch"] >= 1                               # the new worker group started from a checkpoint
    assert result["epochs"] == 8 and _epochs(metrics.parent) == list(range(1, 9))


def test_fp16_on_cpu_is_a_clear_error(tiny_job, capsys, tmp_path):
    job = tiny_job("fp16", train={"precision": "fp16"}, resources={"use_gpu": False})
    assert main(["run", str(job)]) == 2
    assert capsys.readouterr().err == f"error: {job}: train.precision: fp16 needs a GPU (none is used here); use bf16 on CPU\n"
    assert not (tmp_path / "runs" / "fp16").exists()


def test_model_arguments_the_model_rejects_exit_2(tiny_job, capsys, tmp_path):
    job = tiny_job("heads", model={"name": "transformer", "args": {"embed_dim": 30, "num_heads": 4}})
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {job}: model.args: transformer cannot be built for inputs [1, 40]: "
                   f"embed_dim (30) must be divisible by num_heads (4)\n")
    assert not (tmp_path / "runs" / "heads").exists()
