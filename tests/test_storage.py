"""Runs in object storage: a real S3-compatible server on 127.0.0.1 (conftest.py: s3_bucket).
Ray writes the checkpoints there itself; the project's files go through a local mirror that a
rerun on another machine rebuilds from the bucket."""

import json
import shutil

import pyarrow.fs as pafs
import pytest
import yaml

from bigmodel_ray import kinds
from bigmodel_ray.cli import main
from bigmodel_ray.spec import SpecError, load_job, validate
from bigmodel_ray.storage import cache_root, filesystem

BASE = {"name": "t", "data": {"source": "digits"}, "model": {"name": "mlp"}}


@pytest.mark.parametrize("extra, message", [
    ({"storage": "s3://b/runs", "storage_options": {"secret_key": "x"}}, "storage_options.secret_key: credentials never"),
    ({"storage": "s3://b/runs", "storage_options": {"no_such": 1}}, "storage_options: .*no_such"),
    ({"storage": "runs", "storage_options": {"region": "x"}}, "storage_options: only for object storage"),
    ({"storage": "nosuch://b/runs"}, "storage: nosuch://b/runs is not a storage URI"),
])
def test_storage_is_checked_when_the_job_is(extra, message):
    with pytest.raises(SpecError, match=message):
        validate({**BASE, **extra}, "t.yaml")


def _stored(bucket: str, name: str) -> set[str]:
    fs, path = filesystem(f"{bucket}/runs/{name}")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {i.path.removeprefix(path + "/") for i in infos if i.type == pafs.FileType.File}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_run_in_object_storage_resumes_on_another_machine_and_exports(s3_bucket, tiny_job, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setenv("BIGMODEL_RAY_CACHE", str(tmp_path / "cache"))
    job = tiny_job("remote", storage=f"{s3_bucket}/runs", train={"epochs": 1})
    first = kinds.run(load_job(job), str(job), say=lambda _: None)
    assert first["run_dir"] == f"{s3_bucket}/runs/remote" and first["last_checkpoint"].startswith(s3_bucket)
    stored = _stored(s3_bucket, "remote")
    assert {"spec.yaml", "metrics.jsonl", "result.json", "curves.png", "model/state.pt"} <= stored, stored
    assert any(f.startswith("checkpoint_") and f.endswith("/state.pt") for f in stored), stored   # Ray's, direct

    shutil.rmtree(cache_root())           # another machine: nothing local, only the bucket
    more = tiny_job("remote", storage=f"{s3_bucket}/runs", train={"epochs": 2})
    second = kinds.run(load_job(more), str(more), say=lambda _: None)
    assert second["resumed_from_epoch"] == 1 and second["epochs"] == 2, second
    fs, path = filesystem(f"{s3_bucket}/runs/remote")
    with fs.open_input_stream(f"{path}/metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f.read().decode().splitlines()] == [1, 2]
    with fs.open_input_stream(f"{path}/result.json") as f:
        assert json.loads(f.read())["epochs"] == 2

    shutil.rmtree(cache_root())
    capsys.readouterr()
    assert main(["export", f"{s3_bucket}/runs/remote"]) == 0
    assert "argmax agreement 1.0000" in capsys.readouterr().out

    # A compress job: its teacher is the run in the bucket, its own run goes there too.
    compress = tmp_path / "small.yaml"
    compress.write_text(yaml.safe_dump({
        "name": "small", "kind": "compress", "storage": f"{s3_bucket}/runs",
        "compress": {"teacher": f"{s3_bucket}/runs/remote", "methods": [{"method": "lowrank", "ratio": 0.5}],
                     "measure": {"batch_sizes": [1], "rounds": 1}, "select": {"max_accuracy_drop": 1.0}}}))
    assert main(["run", str(compress)]) == 0
    stored = _stored(s3_bucket, "small")
    assert {"spec.yaml", "candidates.csv", "result.json", "candidates/1-lowrank.pt2"} <= stored, stored


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_run_in_google_cloud_storage_resumes_from_the_bucket_alone_and_exports(gcs_bucket, tiny_job, tmp_path,
                                                                                  monkeypatch, capsys):
    monkeypatch.setenv("BIGMODEL_RAY_CACHE", str(tmp_path / "cache"))
    job = tiny_job("ingcs", storage=f"{gcs_bucket}/runs", train={"epochs": 1})
    first = kinds.run(load_job(job), str(job), say=lambda _: None)
    assert first["run_dir"] == f"{gcs_bucket}/runs/ingcs" and first["last_checkpoint"].startswith(gcs_bucket)
    assert {"spec.yaml", "metrics.jsonl", "result.json", "model/state.pt"} <= _stored(gcs_bucket, "ingcs")

    shutil.rmtree(cache_root())           # another machine: only the bucket
    more = tiny_job("ingcs", storage=f"{gcs_bucket}/runs", train={"epochs": 2})
    second = kinds.run(load_job(more), str(more), say=lambda _: None)
    assert second["resumed_from_epoch"] == 1 and second["epochs"] == 2, second
    shutil.rmtree(cache_root())
    capsys.readouterr()
    assert main(["export", f"{gcs_bucket}/runs/ingcs"]) == 0
    assert "argmax agreement 1.0000" in capsys.readouterr().out


def test_a_bucket_that_is_not_there_is_one_line(s3_bucket, tiny_job, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIGMODEL_RAY_CACHE", str(tmp_path / "cache"))
    job = tiny_job("nowhere", storage="s3://no-such-bucket/runs")
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no-such-bucket" in err and "\n" not in err, err
    assert yaml.safe_load(job.read_text())["storage"] == "s3://no-such-bucket/runs"


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_sweep_in_object_storage_resumes_elsewhere_only_from_its_own_signed_state(s3_bucket, tiny_job, tmp_path,
                                                                                   monkeypatch, capsys):
    monkeypatch.setenv("BIGMODEL_RAY_CACHE", str(tmp_path / "cache"))
    job = tiny_job("remote-sweep", storage=f"{s3_bucket}/runs", resources={"workers": 1, "cpus_per_worker": 0.5},
                   train={"epochs": 1, "batch_size": 256},
                   search={"space": {"train.optimizer.lr": "grid([0.003, 0.01])"}, "search_alg": "grid"})
    summary = kinds.run(load_job(job), str(job), say=lambda _: None)
    assert summary["epochs_trained"] == 2
    stored = _stored(s3_bucket, "remote-sweep")
    assert {"spec.yaml", "trials.csv", "best.yaml", "result.json", "signatures.json", "tuner.pkl"} <= stored, stored

    shutil.rmtree(cache_root())            # another machine: the sweep is restored from the bucket
    again = kinds.run(load_job(job), str(job), say=lambda _: None)
    assert again["epochs_trained"] == 2 and again["best"]["trial"] == summary["best"]["trial"]

    fs, path = filesystem(f"{s3_bucket}/runs/remote-sweep")
    with fs.open_output_stream(f"{path}/tuner.pkl") as f:        # what a writer of the bucket could do
        f.write(b"not what the sweep saved")
    shutil.rmtree(cache_root())
    capsys.readouterr()
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "tuner.pkl: not signed with your key" in err and err.count("\n") == 1, err


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_multitask_and_transfer_runs_live_in_object_storage(s3_bucket, tmp_path, monkeypatch):
    """A multitask run in the bucket, then a transfer run in the bucket that takes one of its
    tasks as its source, resumed on a machine with nothing local."""
    monkeypatch.setenv("BIGMODEL_RAY_CACHE", str(tmp_path / "cache"))

    def job(name, **sections):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "storage": f"{s3_bucket}/runs", "resources": {"workers": 1},
                                        "train": {"epochs": 1, "batch_size": 64}, **sections}))
        return path

    multi = job("multi", kind="multitask", model={"name": "mlp"}, multitask={"tasks": {
        "digits": {"data": {"source": "digits"}},
        "inverted": {"data": {"source": "digits", "shift": {"invert": True}}}}})
    summary = kinds.run(load_job(multi), str(multi), say=lambda _: None)
    assert summary["run_dir"] == f"{s3_bucket}/runs/multi", summary
    assert {"spec.yaml", "metrics.jsonl", "result.json", "model/state.pt"} <= _stored(s3_bucket, "multi")

    shutil.rmtree(cache_root())          # the source is read from the bucket alone
    sections = {"kind": "transfer", "data": {"source": "digits", "shift": {"invert": True}},
                "transfer": {"source": f"{s3_bucket}/runs/multi", "source_task": "inverted",
                             "strategy": "full"}}
    first = kinds.run(load_job(job("tuned", **sections)), "tuned.yaml", say=lambda _: None)
    assert {"spec.yaml", "metrics.jsonl", "result.json", "model/state.pt"} <= _stored(s3_bucket, "tuned")
    shutil.rmtree(cache_root())          # another machine: the run resumes from the bucket
    more = job("tuned", **sections, train={"epochs": 2, "batch_size": 64})
    second = kinds.run(load_job(more), str(more), say=lambda _: None)
    assert (first["epochs"], second["epochs"], second["resumed_from_epoch"]) == (1, 2, 1), second
    fs, path = filesystem(f"{s3_bucket}/runs/tuned")
    with fs.open_input_stream(f"{path}/metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f.read().decode().splitlines()] == [1, 2]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_compress_job_in_object_storage_fine_tunes_through_the_bucket(s3_bucket, tmp_path, monkeypatch):
    """Its teacher and its fine-tunes are Ray Train runs in the bucket (any node's workers reach
    them); its candidates and table land there too, and export reads them from the bucket alone."""
    monkeypatch.setenv("BIGMODEL_RAY_CACHE", str(tmp_path / "cache"))
    job = tmp_path / "small.yaml"
    job.write_text(yaml.safe_dump({
        "name": "small", "kind": "compress", "storage": f"{s3_bucket}/runs", "data": {"source": "digits"},
        "model": {"name": "mlp"}, "train": {"epochs": 1, "batch_size": 64}, "resources": {"workers": 1},
        "compress": {"methods": [{"method": "prune", "amount": 0.5, "finetune_epochs": 1}],
                     "measure": {"batch_sizes": [1], "rounds": 1}}}))
    summary = kinds.run(load_job(job), str(job), say=lambda _: None)
    assert [c["candidate"] for c in summary["candidates"]] == ["teacher", "1-prune"]
    stored = _stored(s3_bucket, "small")
    assert {"result.json", "candidates.csv", "candidates/1-prune.pt2"} <= stored, stored
    assert any(p.startswith("finetune/") and p.endswith("state.pt") for p in stored), stored
    shutil.rmtree(cache_root())
    assert main(["export", f"{s3_bucket}/runs/small"]) == 0


def test_tune_reads_a_sweeps_state_through_a_view_that_checks_each_file(tmp_path):
    """What Tune is given as a sweep's storage: state files (pickles) are checked in the read
    itself, data files pass as they are, and a copy (Tune's sync-down) is checked the same way."""
    from bigmodel_ray import integrity
    from bigmodel_ray.tune.signed_state import state_files, verified

    root = tmp_path / "sweep"
    (root / "run_trial_1").mkdir(parents=True)
    (root / "tuner.pkl").write_bytes(b"v1")
    (root / "run_trial_1" / "params.pkl").write_bytes(b"params")
    (root / "trials.csv").write_text("trial\n")
    assert {p.name for p in state_files(root)} == {"tuner.pkl", "params.pkl"}
    integrity.sign_files(root, state_files(root))
    (root / "tuner.pkl").write_bytes(b"v2")             # saved again: both versions stay signed
    integrity.sign_files(root, state_files(root))
    (root / "tuner.pkl").write_bytes(b"v1")

    fs = verified(pafs.LocalFileSystem(), str(root))
    assert fs.open_input_file(f"{root}/tuner.pkl").read() == b"v1"
    (root / "trials.csv").write_text("changed")        # data, never unpickled: read as it is
    assert fs.open_input_stream(f"{root}/trials.csv").read() == b"changed"
    (root / "run_trial_1" / "params.pkl").write_bytes(b"written by someone else")
    with pytest.raises(SpecError, match="params.pkl: not signed with your key"):
        fs.open_input_stream(f"{root}/run_trial_1/params.pkl")
    with pytest.raises(SpecError, match="params.pkl: not signed"):
        pafs.copy_files(f"{root}/run_trial_1/params.pkl", str(tmp_path / "copy.pkl"), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
