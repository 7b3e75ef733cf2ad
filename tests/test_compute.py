"""Activation checkpointing and torch.compile (train/compute.py): the same gradients, buffers and
state dict keys as the plain model (without Ray), and both options in real 2-worker runs (slow)."""

import json
from pathlib import Path

import pytest
import torch

from bigmodel_ray import kinds
from bigmodel_ray.models import build_model
from bigmodel_ray.spec import TrainSpec, load_job
from bigmodel_ray.train.compute import prepare_compute
from bigmodel_ray.train.state import read_state

CPU = torch.device("cpu")
MODELS = {  # name -> (input shape, model args); small enough for a fast backward
    "text_transformer": ((24,), {"vocab_size": 50, "embed_dim": 32, "depth": 2}),
    "transformer": ((1, 40), {"embed_dim": 32, "depth": 2}),
    "cnn1d": ((1, 40), {"channels": [8, 16]}),
}


def _model_and_batch(name, dropout, **options):
    shape, args = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, shape, 5, dropout=dropout, **args)
    g = torch.Generator().manual_seed(1)
    x = model.example_inputs(6, g) if name == "text_transformer" else torch.randn(6, *shape, generator=g)
    return prepare_compute(model, TrainSpec(**options), CPU), x


def _step(model, x):
    """One training forward and backward: the output, every gradient, the state after it."""
    model.train()
    torch.manual_seed(2)                  # the same dropout masks for both models
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {k: p.grad for k, p in model.named_parameters()}, model.state_dict()


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("name", list(MODELS))
def test_activation_checkpointing_keeps_gradients_buffers_and_keys(name, dropout):
    plain = _step(*_model_and_batch(name, dropout, activation_checkpointing=False, compile=False))
    model, x = _model_and_batch(name, dropout, activation_checkpointing=True, compile=False)
    checkpointed = _step(model, x)
    torch.testing.assert_close(checkpointed[0], plain[0], rtol=0, atol=0)
    assert list(checkpointed[1]) == list(plain[1])
    for k, grad in plain[1].items():
        torch.testing.assert_close(checkpointed[1][k], grad, rtol=1e-6, atol=1e-7, msg=k)
    # BatchNorm's running statistics: updated once per step, not again by the recomputation
    assert list(checkpointed[2]) == list(plain[2])
    for k, value in plain[2].items():
        torch.testing.assert_close(checkpointed[2][k], value, rtol=0, atol=0, msg=k)


def test_activation_checkpointing_keeps_less_for_backward():
    def saved_bytes(model, x):
        """Bytes autograd keeps for backward (inside a checkpointed block its own hooks decide)."""
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x).sum()
        return sum(total)

    plain = saved_bytes(*_model_and_batch("text_transformer", 0.1, activation_checkpointing=False, compile=False))
    checkpointed = saved_bytes(*_model_and_batch("text_transformer", 0.1, activation_checkpointing=True, compile=False))
    assert checkpointed < plain / 3


def test_activation_checkpointing_is_off_in_evaluation():
    model, x = _model_and_batch("cnn1d", 0.1, activation_checkpointing=True, compile=False)
    model.eval()
    with torch.no_grad():
        out = model(x)
    reference, _ = _model_and_batch("cnn1d", 0.1, activation_checkpointing=False, compile=False)
    torch.testing.assert_close(out, reference.eval()(x))
    prepare_compute(model, TrainSpec(activation_checkpointing=True), CPU)     # twice: no second layer
    assert model(x).requires_grad


def test_compile_is_in_place_and_keeps_keys():
    plain, _ = _model_and_batch("cnn1d", 0.1, activation_checkpointing=False, compile=False)
    compiled, _ = _model_and_batch("cnn1d", 0.1, activation_checkpointing=True, compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())     # no `_orig_mod.` prefix
    assert compiled._compiled_call_impl is not None                    # compiled at the first call


@pytest.mark.slow          # inductor compiles C++ kernels: ~20 s a model on 2 cores
@pytest.mark.parametrize("name, checkpointing", [("text_transformer", False), ("text_transformer", True),
                                                 ("cnn1d", True)])
def test_compiled_matches_eager(name, checkpointing):
    # dropout on: on CPU the compiled model draws eager's masks (ATen's random numbers)
    compiled = _step(*_model_and_batch(name, 0.3, activation_checkpointing=checkpointing, compile=True))
    plain = _step(*_model_and_batch(name, 0.3, activation_checkpointing=False, compile=False))
    torch.testing.assert_close(compiled[0], plain[0], rtol=1e-4, atol=1e-5)
    for k, grad in plain[1].items():
        torch.testing.assert_close(compiled[1][k], grad, rtol=1e-3, atol=1e-5, msg=k)
    assert list(compiled[2]) == list(plain[2])
    for k, value in plain[2].items():             # BatchNorm statistics updated once
        torch.testing.assert_close(compiled[2][k], value, rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("strategy", [pytest.param("ddp", marks=pytest.mark.long), "fsdp"])
def test_both_options_train_under_ray(tiny_job, strategy):
    spec = load_job(tiny_job(f"compute-{strategy}", train={"strategy": strategy, "activation_checkpointing": True,
                                                          "compile": True}))
    result = kinds.run(spec, f"compute-{strategy}.yaml", say=lambda _: None)
    assert result["test_accuracy"] > 0.25                                  # chance is 0.10
    keys = list(build_model(spec.model.name, (1, 40), 10, **spec.model.args).state_dict())
    assert list(read_state(result["checkpoint"])["model"]) == keys
    epochs = [json.loads(line) for line in (Path(spec.storage) / spec.name / "metrics.jsonl").read_text().splitlines()]
    assert epochs[0]["epoch_s"] > epochs[1]["epoch_s"]                     # the compile, in epoch 1
