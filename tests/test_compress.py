"""Compression methods on their own: pruning, low-rank, quantization, distillation loss, ONNX."""

import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bigmodel_ray.compress import candidates, distill, export, lowrank, prune, quantize
from bigmodel_ray.compress.chain import Candidate
from bigmodel_ray.compress.measure import parameter_counts, serialized_bytes
from bigmodel_ray.models import build_model

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as (N, 1, 8, 8) floats: train / test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    train, test = order[:1400], order[1400:]
    return (x[train], y[train]), (x[test], y[test])


def fit(model, data, epochs=8, lr=3e-3):
    (x, y), _ = data
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval()


@torch.inference_mode()
def accuracy(model, data):
    _, (x, y) = data
    return (model.eval()(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def trained_cnn(digits):
    return fit(build_model("cnn2d", (1, 8, 8), 10, channels=[32, 64]), digits)


def test_unstructured_pruning_hits_the_requested_sparsity():
    model = build_model("cnn2d", (1, 8, 8), 10, channels=[16, 32])
    prune.unstructured(model, 0.7)
    assert prune.sparsity(model) == pytest.approx(0.7, abs=0.001)
    prune.make_permanent(model)
    assert prune.sparsity(model) == pytest.approx(0.7, abs=0.001)
    assert not any("weight_orig" in k or "weight_mask" in k for k in model.state_dict())
    total, nonzero = parameter_counts(model)
    assert nonzero < 0.4 * total


def test_structured_pruning_shrinks_layers_and_recovers_after_fine_tuning(trained_cnn, digits):
    import copy

    base_acc = accuracy(trained_cnn, digits)
    model = copy.deepcopy(trained_cnn)
    before = sum(p.numel() for p in model.parameters())
    prune.structured(model, digits[0][0][:4], amount=0.5, norm=2)
    after = sum(p.numel() for p in model.parameters())
    assert model.stem[0].out_channels == 16 and model.stem[1].num_features == 16     # BatchNorm followed
    assert model.blocks[1].body[0].in_channels == 16                                   # and the next layer's inputs
    assert after < 0.3 * before and serialized_bytes(model) < 0.35 * serialized_bytes(trained_cnn)
    assert model(digits[1][0]).shape == (len(digits[1][1]), 10)
    fit(model, digits, epochs=3, lr=1e-3)
    assert accuracy(model, digits) >= base_acc - 0.03, (accuracy(model, digits), base_acc)


def test_low_rank_factorization_is_the_truncated_svd_and_counts_match():
    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    rank = 8
    pair = lowrank.factorize_linear(layer, rank)
    u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    truncated = u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]
    product = pair[1].weight @ pair[0].weight
    assert torch.allclose(product, truncated, atol=1e-5)
    x = torch.randn(5, 64)
    assert torch.allclose(pair(x), x @ truncated.T + layer.bias, atol=1e-5)
    assert sum(p.numel() for p in pair.parameters()) == lowrank.factorized_params(64, 48, rank) == rank * (64 + 48) + 48


def test_low_rank_model_saves_parameters_and_keeps_full_rank_exact():
    model = build_model("mlp", (1, 8, 8), 10, hidden=256, depth=2).eval()
    x = torch.randn(7, 1, 8, 8)
    ranks = lowrank.factorize(model, ratio=0.25)
    assert ranks == {"net.1": 16, "net.4": 64}        # ranks 64 and 256 x 0.25; the classifier stays whole
    assert sum(p.numel() for p in model.parameters()) == (
        lowrank.factorized_params(64, 256, 16) + lowrank.factorized_params(256, 256, 64) + 256 * 10 + 10)
    conv = build_model("cnn2d", (1, 8, 8), 10, channels=[16, 32]).eval()
    y = conv(x)
    # Every conv's full rank: an exact rewrite (kept only where it saves parameters, so none here).
    assert lowrank.factorize(conv, ratio=1.0) == {} and torch.equal(conv(x), y)
    assert lowrank.rank_for(torch.tensor([3.0, 2.0, 1.0, 0.1]), energy=0.9) == 2


def test_quantized_models_stay_close_to_fp32(trained_cnn, digits):
    _, (x, _) = digits
    with torch.inference_mode():
        reference = trained_cnn(x)
        dynamic = quantize.dynamic(trained_cnn)(x)
        static = quantize.static(trained_cnn, [digits[0][0][i:i + 64] for i in range(0, 512, 64)], x[:8])(x)
    for out in (dynamic, static):
        assert (out.argmax(1) == reference.argmax(1)).float().mean() >= 0.97
        assert (out - reference).abs().max() < 0.25 * reference.abs().max()


def test_static_int8_saves_and_exports_dynamic_int8_says_why_not(trained_cnn, digits, tmp_path):
    import subprocess
    import sys

    _, (x, _) = digits
    static = quantize.static(trained_cnn, [x[:64]], x[:8])
    # Saved as a compress run saves a candidate (re-exported with the shared dynamic batch range, signed),
    # then loaded and exported by `bigmodel-ray export` in a fresh process (no q/dq ops registered yet).
    candidates.save([Candidate("s", static)], tmp_path, (1, 8, 8), 10, x[:2], say=print)
    done = subprocess.run([sys.executable, "-m", "bigmodel_ray", "export", str(tmp_path / "candidates" / "s.pt2")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # onnxruntime's int8 kernels round a little differently from torch's q/dq: on export's random
    # inputs, logits differ by about one quantization step (measured 0.03-0.11)
    diff, agreement = re.search(r"max \|diff\| (\S+), argmax agreement (\S+);", done.stdout).groups()
    assert float(diff) < 0.5 and float(agreement) >= 0.95 and (tmp_path / "candidates" / "s.onnx").exists()
    with pytest.raises(export.ExportError, match="^dynamic int8 .* has no ONNX translation; static int8 exports$"):
        export.to_onnx(quantize.dynamic(trained_cnn), x[:2], tmp_path / "d.onnx")


def test_distillation_loss_matches_a_hand_computation():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    t = torch.tensor([[1.5, 1.0, -0.5], [-1.0, 2.0, 0.5]])
    y = torch.tensor([0, 1])
    temperature, alpha = 3.0, 0.7

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    kl = np.mean([sum(pt * math.log(pt / ps) for pt, ps in zip(softmax(ti / temperature), softmax(si / temperature)))
                  for si, ti in zip(s.numpy(), t.numpy())])
    ce = np.mean([-math.log(softmax(si)[yi]) for si, yi in zip(s.numpy(), y.numpy())])
    expected = alpha * temperature**2 * kl + (1 - alpha) * ce
    assert distill.kd_loss(s, t, y, temperature, alpha).item() == pytest.approx(expected, rel=1e-5)


def test_onnx_export_matches_onnxruntime(trained_cnn, digits, tmp_path):
    from bigmodel_ray.compress import export

    _, (x, _) = digits
    model = prune.structured(__import__("copy").deepcopy(trained_cnn), x[:2], amount=0.25)
    path = export.to_onnx(model, x[:2], tmp_path / "m.onnx")
    result = export.parity(model, path, x[:64])
    assert result["max_abs_diff"] < 1e-4 and result["argmax_agreement"] == 1.0
    assert result["ort_latency_ms_bs1"] > 0 and result["onnx_bytes"] > 1000


def test_gradual_pruning_steps_reach_the_amount():
    from bigmodel_ray.compress.chain import step_amounts

    shares = step_amounts(0.6, 3)
    left = 1.0
    for k, share in enumerate(shares, 1):
        left *= 1 - share
        assert 1 - left == pytest.approx(0.6 * k / 3)


@pytest.mark.slow
def test_compress_pipeline_trains_compresses_selects_and_exports(ray_cluster, tmp_path, capsys):
    """One YAML: teacher trained first, distill -> structured prune -> low-rank -> int8, every
    candidate measured, one selected by the rule, exported to ONNX and checked."""
    import json

    import pandas as pd
    import yaml

    from bigmodel_ray.cli import main

    job = tmp_path / "pipe.yaml"
    job.write_text(yaml.safe_dump({
        "name": "pipe", "kind": "compress", "storage": str(tmp_path / "runs"), "data": {"source": "digits"},
        "model": {"name": "cnn2d", "args": {"channels": [32, 64]}},
        "train": {"epochs": 4, "batch_size": 64, "optimizer": {"lr": 0.003}},
        "resources": {"workers": 2, "cpus_per_worker": 0.5},
        "compress": {"methods": [
            {"method": "distill", "student": {"name": "cnn2d", "args": {"channels": [8, 16]}}, "epochs": 4},
            {"method": "prune", "structured": True, "amount": 0.25, "finetune_epochs": 1},
            {"method": "lowrank", "ratio": 0.5},
            {"method": "quantize", "mode": "dynamic"}],
            "measure": {"batch_sizes": [1, 64], "rounds": 1},
            "select": {"max_accuracy_drop": 0.05, "minimize": "bytes"}}}))
    assert main(["run", str(job)]) == 0
    run_dir = tmp_path / "runs" / "pipe"
    table = pd.read_csv(run_dir / "candidates.csv")
    assert list(table["candidate"]) == ["teacher", "1-distill", "2-prune", "3-lowrank", "4-quantize"]
    assert (tmp_path / "runs" / "pipe-teacher" / "result.json").exists()
    params = dict(zip(table["candidate"], table["params"]))
    assert params["1-distill"] < params["teacher"] / 4 and params["2-prune"] < params["1-distill"]
    assert table["pareto"].any() and table["selected"].sum() == 1
    ok = table[table["accuracy_drop"] <= 0.05]
    assert table.loc[table["selected"], "candidate"].item() == ok.loc[ok["bytes"].idxmin(), "candidate"]
    result = json.loads((run_dir / "result.json").read_text())
    if "error" not in result["export"]:
        assert result["export"]["max_abs_diff"] < 1e-3 and result["export"]["argmax_agreement"] >= 0.99
    assert (run_dir / "pareto.png").stat().st_size > 0
    capsys.readouterr()
    # Any saved candidate exports on its own; a dynamic int8 one says clearly why not.
    assert main(["export", str(run_dir / "candidates" / "2-prune.pt2")]) == 0
    assert "argmax agreement 1.0000" in capsys.readouterr().out
    if (run_dir / "candidates" / "4-quantize.pt2").exists():
        assert main(["export", str(run_dir / "candidates" / "4-quantize.pt2")]) == 2
        assert "cannot be exported to ONNX (dynamic int8" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("compress.methods=[{method: prune, amount: 1.5}]", "compress.methods.0.amount: must be < 1 (got 1.5)"),
    ("compress.methods=[{method: lowrank}]", "compress.methods.0.ratio: give exactly one of ratio or energy"),
    ("compress.methods=[{method: quantize}, {method: lowrank, ratio: 0.5}]", "compress.methods: quantize must come last"),
    ("compress.methods=[{method: shrink}]", "compress.methods.0: method must be one of"),
    ("compress.methods=[{method: distill, student: {name: cnn2d, args: {width: 3}}}]",
     "compress.methods.0.student.args: unknown argument 'width'"),
    ("compress.select.minimize=latency_ms_bs7", "compress.select: minimize must be one of latency_ms_bs1"),
])
def test_bad_method_parameters_exit_2(tmp_path, capsys, override, message):
    import yaml

    from bigmodel_ray.cli import main

    job = tmp_path / "c.yaml"
    job.write_text(yaml.safe_dump({"name": "c", "kind": "compress", "data": {"source": "digits"},
                                   "model": {"name": "cnn2d"}, "compress": {"methods": [{"method": "quantize"}]}}))
    assert main(["validate", str(job), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {job}: ") and message in err and len(err.splitlines()) == 1, err
