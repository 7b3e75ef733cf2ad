import os
import subprocess
import sys

import pytest
from conftest import ROOT

from bigmodel_ray.spec import SpecError, load_job

JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_shipped_jobs_validate_and_show_their_command(job):
    spec = load_job(job)
    assert spec.name == job.stem
    assert job.read_text().startswith("# bigmodel-ray run jobs/")


def test_defaults_and_overrides(tiny_job):
    spec = load_job(tiny_job(), ["train.epochs=3", "train.optimizer.name=sgd", "model.args.channels=[4, 8]",
                                 "train.grad_clip=1.5", "resources.use_gpu=false"])
    assert spec.train.epochs == 3 and spec.train.optimizer.name == "sgd"
    assert spec.model.args["channels"] == [4, 8] and spec.train.grad_clip == 1.5
    assert spec.resources.use_gpu is False
    assert spec.train.precision == "fp32" and spec.checkpoint.keep == 2     # documented defaults


@pytest.mark.parametrize("override, message", [
    ("train.epochs=-1", "train.epochs: must be > 0 (got -1)"),
    ("train.epochz=3", "train.epochz: unknown key"),
    ("train.precision=fp8", "train.precision: must be 'fp32', 'bf16' or 'fp16' (got 'fp8')"),
    ("model.name=resnet999", "model.name: must be one of mlp | cnn1d | cnn2d | transformer | text_transformer | text_lm | hf "
                             "| mf | neumf | two_tower (got 'resnet999')"),
    ("model.args.width=3", "model.args: unknown argument 'width' for model 'cnn1d'"),
    ("data.source=imagenet", "data.source: must be one of"),
    ("resources.use_gpu=maybe", "resources.use_gpu: must be true, false or auto (got 'maybe')"),
    ("train.optimizer.lr=0", "train.optimizer.lr: must be > 0 (got 0)"),
    ("train=7", "train: must be a mapping of keys (got 7)"),
    ("name=../escape", "name: must be letters, digits"),
    ("failure.max_failures=-2", "failure.max_failures: must be >= -1 (got -2)"),
    ("train.class_weights=inverse", "train.class_weights: must be 'none' or 'balanced' (got 'inverse')"),
])
def test_bad_values_name_file_and_key(tiny_job, override, message):
    path = tiny_job()
    with pytest.raises(SpecError) as e:
        load_job(path, [override])
    assert str(e.value).startswith(f"{path}: {message}")
    assert "\n" not in str(e.value)


def test_class_weights_only_where_a_classifier_takes_cross_entropy(tmp_path):
    from bigmodel_ray.spec import validate

    lm = {"name": "lm", "data": {"source": "reviews", "text": {"columns": ["Review Text"]}}, "model": {"name": "text_lm"},
          "train": {"task": "lm", "class_weights": "balanced"}}
    with pytest.raises(SpecError, match="train.class_weights: weighs a classifier's cross-entropy"):
        validate(lm, "lm.yaml")
    assert validate({"name": "ok", "data": {"source": "digits"}, "model": {"name": "mlp"},
                     "train": {"class_weights": "balanced"}}, "ok.yaml").train.class_weights == "balanced"


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_job(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [\n")
    with pytest.raises(SpecError, match=r"bad.yaml: line \d+: not valid YAML"):
        load_job(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_job(bad)
    with pytest.raises(SpecError, match="expected KEY.PATH=VALUE"):
        load_job(ROOT / "jobs" / "quickstart.yaml", ["train.epochs"])


def test_cli_bad_spec_exits_2_with_one_line(tiny_job):
    path = tiny_job()
    out = subprocess.run([sys.executable, "-m", "bigmodel_ray", "run", str(path), "--set", "train.epochs=-1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr == f"error: {path}: train.epochs: must be > 0 (got -1)\n"
    assert out.stdout == ""
    assert not (path.parent / "runs").exists()        # nothing written for a rejected job


def test_missing_local_data_paths_exit_2_before_ray_starts(tmp_path):
    """RAY_ADDRESS points at nothing: starting Ray would fail, so the error must come first."""
    import yaml

    (tmp_path / "imgs").mkdir()
    tasks = {"a": {"data": {"source": "image_folder", "path": str(tmp_path / "imgs")}},
             "b": {"data": {"source": "parquet", "path": str(tmp_path / "nope.parquet")}}}
    job = tmp_path / "multi.yaml"
    job.write_text(yaml.safe_dump({"name": "m", "kind": "multitask", "model": {"name": "cnn2d"},
                                   "storage": str(tmp_path / "runs"), "multitask": {"tasks": tasks}}))
    out = subprocess.run([sys.executable, "-m", "bigmodel_ray", "run", str(job)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:9"})
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"error: {job}: multitask.tasks.b.data.path: {tmp_path / 'nope.parquet'} does not exist\n"
    assert not (tmp_path / "runs").exists()


def test_cli_validate_prints_resolved_spec(tiny_job):
    out = subprocess.run([sys.executable, "-m", "bigmodel_ray", "validate", str(tiny_job()), "--set", "seed=7"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "seed: 7" in out.stdout and "precision: fp32" in out.stdout and "keep: 2" in out.stdout


def test_a_teacher_or_source_run_folder_supplies_the_model_and_data(tmp_path):
    from bigmodel_ray.spec import dump, validate

    run = tmp_path / "runs" / "teacher"
    run.mkdir(parents=True)
    trained = load_job(ROOT / "jobs" / "digits_cnn.yaml")
    (run / "spec.yaml").write_text(dump(trained))
    methods = [{"method": "prune", "amount": 0.5}]

    compress = validate({"name": "c", "kind": "compress", "compress": {"teacher": str(run), "methods": methods}}, "c.yaml")
    assert compress.model == trained.model and compress.data == trained.data
    other = {"source": "synthetic", "image_size": 16}
    compress = validate({"name": "c", "kind": "compress", "data": other,
                         "compress": {"teacher": str(run), "methods": methods}}, "c.yaml")
    assert compress.data.source == "synthetic" and compress.model == trained.model   # the job's own data wins

    transfer = validate({"name": "t", "kind": "transfer", "data": {"source": "digits", "shift": {"invert": True}},
                         "transfer": {"source": str(run)}}, "t.yaml")
    assert transfer.model == trained.model and transfer.transfer.source_data == trained.data

    for kind, section in (("compress", {"teacher": str(run), "methods": methods}), ("transfer", {"source": str(run)})):
        with pytest.raises(SpecError, match=rf"^{kind}\.yaml: model: a {kind} job takes its .*model; remove this"):
            validate({"name": "x", "kind": kind, "data": {"source": "digits"}, "model": {"name": "mlp"}, kind: section},
                     f"{kind}.yaml")


# Malformed input: each ends as one SpecError line (tests/test_fuzz.py tries many more).
GOOD = "name: j\ndata: {source: digits}\nmodel: {name: cnn2d, args: {channels: [8, 16]}}\n"
BOMB = "".join(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9 if i else ['lol'] * 9)}]\n" for i in range(9))


@pytest.mark.parametrize("content, message", [
    (BOMB + GOOD, r"line 5: not valid YAML \(more than 10,000 values once aliases are expanded\)"),
    (GOOD.replace("[8, 16]", "&a [8, *a]"), r"line 3: not valid YAML \(alias \*a refers to a collection that contains it"),
    (GOOD.encode() + b"seed: \xff\n", r"line 4: not UTF-8 text \(byte 0xff\)"),
    (GOOD + "extra: " + "[" * 5000 + "\n", r"line 4: not valid YAML \(nested deeper than 32 levels\)"),
    (GOOD + "seed: " + "9" * 5000 + "\n", r"line 4: not valid YAML \(an integer of 5,000 characters"),
    (GOOD + "when: 2001-13-45\n", r"line 4: not valid YAML \(month must be in 1..12\)"),
    (GOOD.replace("[8, 16]", "!!binary /w=="), r"model.args: must be numbers, strings, booleans, lists or mappings"),
])
def test_malformed_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "job.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SpecError, match=rf"^{path}: {message}"):
        load_job(path)


@pytest.mark.parametrize("override, message", [
    ("model.args.channels.²=3", r"model.args.channels: has 2 entries; '²' is not one of them"),
    ("model.args.channels=" + "[" * 2000, r"--set model.args.channels=\[+… \(2,020 characters\): value is not valid "
                                          r"YAML \(nested deeper than 32 levels\)"),
    ("model.args.channels=[-1]", r"model.args: cnn2d cannot be built for inputs \[1, 8, 8\]: every entry of channels "
                                 r"must be >= 1 \(got -1\)"),
    ("model={name: transformer, args: {num_heads: 0}}", r"model.args: transformer cannot be built .*num_heads must be >= 1"),
    ("model={name: transformer, args: {patch_size: 16}}",
     r"model.args: transformer cannot be built .*patch_size 16 is larger than the inputs \(8, 8\)"),
    ("model.args.channels=[100000000, 100000000]", r"model.args: cnn2d would have [\d,]+ parameters"),
    ("data.normalize={mean: [0.5], std: [.nan]}", r"data.normalize.std.0: must be a finite number \(got nan\)"),
    ("data={source: synthetic, target_size: [0, 8]}", r"data.target_size.0: must be >= 1 \(got 0\)"),
    ("seed=4294967296", r"seed: must be <= 4294967295"),
    ("resources.workers=18446744073709551616", r"resources.workers: must be <= 4096"),
    ("train.epochs=18446744073709551616", r"train.epochs: must be <= 100000"),
    ("name=" + "a" * 201, r"name: must be at most 200 characters"),
    ("storage=" + "x" * 3_000_000, r"--set storage=x+… \(3,000,008 characters\): value is longer than a job file"),
    ("storage=" + "x" * 900_000, r"storage: String should have at most 4096 characters \(got 'x+'… \(900,000 characters\)\)"),
])
def test_malformed_overrides_are_one_short_line(tmp_path, override, message):
    path = tmp_path / "job.yaml"
    path.write_text(GOOD)
    with pytest.raises(SpecError, match=rf"^({path}: )?{message}") as e:
        load_job(path, [override])
    assert "\n" not in str(e.value) and len(str(e.value)) <= 500


@pytest.mark.parametrize("run_spec, message", [
    ("- a\n- list\n", r"compress.teacher: .*/spec.yaml is not a job spec \(a mapping of sections\); got list"),
    ("kind: multitask\nmultitask: {tasks: [a, b]}\n", r"compress.teacher: the run's spec.yaml has no multitask.tasks"),
    ("model: {name: cnn2d}\n\xff", r"compress.teacher: .*/spec.yaml: line 2: not UTF-8 text"),
])
def test_a_malformed_run_folder_is_one_line(tmp_path, run_spec, message):
    (tmp_path / "spec.yaml").write_bytes(run_spec.encode("latin-1"))
    job = {"name": "c", "kind": "compress", "compress": {"teacher": str(tmp_path), "teacher_task": "a",
                                                         "methods": [{"method": "prune", "amount": 0.5}]}}
    from bigmodel_ray.spec import validate
    with pytest.raises(SpecError, match=rf"^c.yaml: {message}"):
        validate(job, "c.yaml")


def test_validate_of_a_bomb_exits_2_in_process(tmp_path, capsys):
    from bigmodel_ray.cli import main

    path = tmp_path / "job.yaml"
    path.write_text(BOMB.replace("b8: &b8", "x: &b8") + GOOD.replace("[8, 16]", "*b8"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than 10,000 values" in err
