"""model.init_from: a run starts from weights the user has (safetensors or a torch state dict)."""

import pytest
import torch
import yaml
from safetensors.torch import save_file

from bigmodel_ray.cli import main
from bigmodel_ray.models import build_model
from bigmodel_ray.runs import result_checkpoint
from bigmodel_ray.train.init import init_from
from bigmodel_ray.train.state import read_state

ARGS = {"channels": [8, 16], "kernel_size": 5}


def _model(num_classes=10, **args):
    torch.manual_seed(1)
    return build_model("cnn1d", (1, 40), num_classes, **{**ARGS, **args})


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict", "checkpoint"])
def test_weights_load_from_each_format(tmp_path, fmt):
    source = _model()
    state = source.state_dict()
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state} if fmt == "checkpoint" else {f"module.{k}": v for k, v in state.items()}, path)
    target = build_model("cnn1d", (1, 40), 10, **ARGS)
    assert init_from(target, path) == len(state)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), state.values()))


def test_a_file_that_does_not_fit_names_what_differs_and_non_strict_loads_what_fits(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(_model(num_classes=3).state_dict() | {"extra.weight": torch.zeros(2)}, path)
    target = build_model("cnn1d", (1, 40), 10, **ARGS)
    with pytest.raises(ValueError) as e:
        init_from(target, path)
    message = str(e.value)
    assert "\n" not in message and "1 unexpected (extra.weight)" in message
    assert "2 mis-shaped (head.3.weight [3, 16] vs [10, 16], head.3.bias [3] vs [10])" in message
    loaded = init_from(target, path, strict=False)
    assert loaded == len(target.state_dict()) - 2                 # everything but the classifier


def test_pickled_objects_are_refused_in_one_line(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "object": object()}, path)
    with pytest.raises(ValueError, match=r"cannot be read as weights \(UnpicklingError"):
        init_from(build_model("cnn1d", (1, 40), 10, **ARGS), path)


@pytest.mark.usefixtures("ray_cluster")
def test_a_run_starts_from_the_file_and_a_wrong_file_exits_2(tiny_job, tmp_path, capsys):
    start = _model()
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in start.state_dict().items()}, str(path))
    job = tiny_job("init", model={"init_from": str(path)}, train={"epochs": 1, "optimizer": {"lr": 1e-9}})
    assert main(["run", str(job)]) == 0
    run = tmp_path / "runs" / "init"
    trained = read_state(result_checkpoint(run))["model"]
    for key, value in start.state_dict().items():        # lr 1e-9: one epoch leaves the weights where they began
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(trained[key], value, atol=1e-6), key

    torch.save(_model(num_classes=3).state_dict(), tmp_path / "three.pt")
    wrong = tiny_job("wrong", model={"init_from": str(tmp_path / "three.pt")})
    capsys.readouterr()
    assert main(["run", str(wrong)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.init_from:" in err and "mis-shaped" in err, err
    assert not (tmp_path / "runs" / "wrong").exists()             # refused before anything was written


def test_a_run_made_before_a_field_existed_still_resumes(tmp_path):
    from bigmodel_ray.runs import check_same_job
    from bigmodel_ray.spec import SpecError, dump, validate

    spec = validate({"name": "old", "data": {"source": "mnist1d"}, "model": {"name": "cnn1d", "args": ARGS}}, "j.yaml")
    old = yaml.safe_load(dump(spec))
    del old["model"]["init_from"], old["model"]["init_strict"]           # written before these keys existed
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(old))
    check_same_job(tmp_path, spec, "j.yaml")
    changed = validate({"name": "old", "data": {"source": "mnist1d"},
                        "model": {"name": "cnn1d", "args": ARGS, "init_from": "w.pt"}}, "j.yaml")
    with pytest.raises(SpecError, match="model: differs from the run"):
        check_same_job(tmp_path, changed, "j.yaml")
