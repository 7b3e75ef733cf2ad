"""Transfer pieces on their own: freezing, head replacement, learning-rate groups, gradient reversal."""

import pytest
import torch
import torch.nn.functional as F

from bigmodel_ray.models import build_model
from bigmodel_ray.transfer import dann, strategies


@pytest.mark.parametrize("name, shape", [("cnn2d", (1, 8, 8)), ("cnn1d", (1, 40)), ("mlp", (1, 40)),
                                         ("transformer", (1, 40))])
def test_frozen_parameters_get_no_gradient_and_do_not_change(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    strategies.set_trainable(model, "freeze", freeze_stages=2)
    frozen = [p for stage in strategies.stages(model)[:2] for p in stage.parameters()]
    before = [p.detach().clone() for p in frozen]
    opt = torch.optim.AdamW(strategies.param_groups(model), lr=1e-2, weight_decay=0.1)
    F.cross_entropy(model(torch.randn(8, *shape)), torch.randint(0, 10, (8,))).backward()
    opt.step()
    assert all(p.grad is None for p in frozen) and all(torch.equal(a, b) for a, b in zip(frozen, before))
    assert any(p.grad is not None for p in model.parameters())


def test_linear_probe_trains_only_the_classifier_and_heads_are_replaced():
    model = build_model("cnn2d", (1, 8, 8), 10)
    stem = model.stem[0].weight.detach().clone()
    strategies.replace_head(model, 4)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4) and torch.equal(model.stem[0].weight, stem)
    strategies.set_trainable(model, "linear_probe")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"{strategies.classifier_path(model)}.weight", f"{strategies.classifier_path(model)}.bias"]


def test_discriminative_rates_and_gradual_unfreezing():
    model = build_model("cnn1d", (1, 40), 10, channels=[8, 16, 32])
    groups = strategies.param_groups(model, backbone_factor=0.1)
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
    n = len(strategies.stages(model))          # stem + 3 blocks
    assert [strategies.unfrozen_stages(e, n, every=2) for e in range(10)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    trainable = strategies.gradual_trainable(model, epoch=2, every=2)
    head = model.get_submodule(strategies.classifier_path(model))
    assert trainable == set(head.parameters()) | set(strategies.stages(model)[-1].parameters())


def test_gradient_reversal_multiplies_the_gradient_by_minus_lambda():
    x = torch.ones(3, requires_grad=True)
    dann.grad_reverse(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))
    y = torch.randn(4, 6, requires_grad=True)
    assert torch.equal(dann.grad_reverse(y, 2.0), y)
    assert dann.ganin_lambda(0.0) == 0.0 and dann.ganin_lambda(1.0) == pytest.approx(0.99991, abs=1e-5)
    head = dann.DomainClassifier(6)
    assert head(y, 1.0).shape == (4,)


def test_declarative_shifts_on_real_data():
    import numpy as np

    from bigmodel_ray.data.builtin import load_digits, load_mnist1d
    from bigmodel_ray.data.shift import apply_shift
    from bigmodel_ray.spec import ShiftSpec

    x = load_digits(0.1, 0.15, 0)["train"][0][:16]
    assert np.array_equal(apply_shift(x, ShiftSpec()), x)
    assert np.allclose(apply_shift(x, ShiftSpec(rotation=90)), np.rot90(x, k=1, axes=(2, 3)), atol=1e-5)
    inverted = apply_shift(x, ShiftSpec(invert=True))
    assert np.allclose(apply_shift(inverted, ShiftSpec(invert=True)), x, atol=1e-6)
    noisy = apply_shift(x, ShiftSpec(noise=0.1, seed=3))
    assert np.array_equal(noisy, apply_shift(x, ShiftSpec(noise=0.1, seed=3))) and 0.08 < (noisy - x).std() < 0.12
    assert apply_shift(x, ShiftSpec(blur=1.0)).std() < x.std()
    series = load_mnist1d(0.1, 0.15, 0)["train"][0][:4]
    stretched = apply_shift(series, ShiftSpec(scale=1.5))
    assert stretched.shape == series.shape and not np.allclose(stretched, series)
