"""The training step, evaluation metrics, schedule and state file, without Ray."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from bigmodel_ray.models import build_model
from bigmodel_ray.spec import TrainSpec
from bigmodel_ray.train.metrics import confusion_matrix, summarize
from bigmodel_ray.train.optim import build_optimizer, build_scheduler, lr_factor
from bigmodel_ray.train.state import gather_state, read_state, restore_state, save_state
from bigmodel_ray.train.steps import evaluate, train_epoch

CPU = torch.device("cpu")


def _mlp(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", (1, 40), 10, hidden=32, depth=2, dropout=0.0)   # deterministic: no dropout


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g)


def _run(model, x, y, batch, accum, opt_name="sgd", clip=None, precision="fp32"):
    spec = TrainSpec(epochs=1, batch_size=batch, grad_accum=accum, grad_clip=clip, precision=precision,
                     optimizer={"name": opt_name, "lr": 0.1})
    opt = build_optimizer(model.parameters(), spec)
    sched = build_scheduler(opt, spec, steps_per_epoch=10)
    batches = list(zip(x.split(batch), y.split(batch)))
    return train_epoch(model, batches, opt, sched, device=CPU, precision=precision, grad_accum=accum, grad_clip=clip)


def test_balanced_class_weights_count_the_shard_and_weigh_the_loss():
    from bigmodel_ray.train.objectives import Classify
    from bigmodel_ray.train.shards import TrainBatches
    from bigmodel_ray.train.worker import balanced_weights

    class Inputs:
        needs_key = False

    y = np.array([0] * 8 + [1] * 2, dtype=np.int64)
    shard = TrainBatches((np.zeros((10, 1, 4), np.float32), y), batch_size=4, in_memory=True, seed=0, rank=0,
                         device=torch.device("cpu"), inputs=Inputs())
    weights = balanced_weights(shard, 3, world=1)          # class 2 has no rows: weight 0
    assert weights.tolist() == pytest.approx([10 / (3 * 8), 10 / (3 * 2), 0.0])
    objective = Classify()
    objective.class_weight = weights
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    weighted, _ = objective.loss(lambda x: logits, (None, torch.tensor([1, 0])))
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0]), weight=weights)
    assert weighted.item() == pytest.approx(expected.item())


@pytest.mark.parametrize("opt_name, clip", [("sgd", None), ("adamw", 0.5)])
def test_grad_accumulation_matches_the_larger_batch(opt_name, clip):
    x, y = _data()
    big, accumulated = _mlp(), _mlp()
    _run(big, x, y, batch=32, accum=1, opt_name=opt_name, clip=clip)
    _run(accumulated, x, y, batch=16, accum=2, opt_name=opt_name, clip=clip)
    # Adam divides by sqrt(v): float rounding in near-zero gradients shows up at ~1e-4 of lr=0.1.
    atol = 1e-5 if opt_name == "sgd" else 5e-4
    for a, b in zip(big.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)
    moved = sum((a - b).abs().sum() for a, b in zip(big.parameters(), _mlp().parameters()))
    assert moved > 0.1                                            # the runs did train


def test_short_last_group_is_averaged_not_shrunk():
    # 3 micro-batches with accum 2: the last optimizer step sees one micro-batch, at full weight.
    x, y = _data(n=48)
    accumulated, plain = _mlp(), _mlp()
    _run(accumulated, x, y, batch=16, accum=2)
    _run(plain, torch.cat([x[:32], x[32:]]), torch.cat([y[:32], y[32:]]), batch=32, accum=1)
    for a, b in zip(accumulated.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_trains_on_cpu():
    x, y = _data()
    model = _mlp()
    first = _run(model, x, y, batch=32, accum=1, precision="bf16")["loss"]
    for _ in range(5):
        last = _run(model, x, y, batch=32, accum=1, precision="bf16")["loss"]
    assert np.isfinite(last) and last < first


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 5, 300))
    pred[pred == 4] = 3                                              # class 4 never predicted
    m = summarize(confusion_matrix(torch.tensor(y), torch.tensor(pred), 5), loss_sum=30.0)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["loss"] == pytest.approx(0.1) and m["count"] == 300


def test_evaluate_over_split_shares_equals_whole_split():
    x, y = _data(n=100)
    model = _mlp().eval()
    whole = evaluate(model, [(x, y)], num_classes=10, device=CPU)
    shares = [evaluate(model, [(x[i::3], y[i::3])], num_classes=10, device=CPU) for i in range(3)]
    assert sum(s["count"] for s in shares) == 100
    assert whole["accuracy"] == pytest.approx(sum(s["accuracy"] * s["count"] for s in shares) / 100)


def test_cosine_schedule_with_warmup():
    f = [lr_factor(s, total_steps=100, warmup_steps=10, name="cosine", min_ratio=0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] == pytest.approx(0.1, abs=1e-3)
    assert lr_factor(50, 100, 0, "constant", 0.0) == 1.0


def test_state_round_trip_restores_training_exactly(tmp_path):
    x, y = _data()
    spec = TrainSpec(epochs=2, batch_size=32, optimizer={"name": "adamw", "lr": 0.01}, schedule={"name": "cosine"})

    def setup(seed):
        model = _mlp(seed)
        opt = build_optimizer(model.parameters(), spec)
        return model, opt, build_scheduler(opt, spec, steps_per_epoch=3)

    def epoch(model, opt, sched):
        return train_epoch(model, list(zip(x.split(32), y.split(32))), opt, sched, device=CPU)

    model, opt, sched = setup(0)
    epoch(model, opt, sched)
    save_state(gather_state(model, opt, sched, None, epoch=1, meta={"note": "test"}), tmp_path)
    expected = epoch(model, opt, sched)["loss"]

    restored = setup(seed=123)                                         # different init: everything comes from the file
    state = read_state(tmp_path)
    assert restore_state(state, *restored, None, rank=0) == 1 and state["meta"] == {"note": "test"}
    assert epoch(*restored)["loss"] == pytest.approx(expected, rel=1e-6)
    for a, b in zip(model.parameters(), restored[0].parameters()):
        torch.testing.assert_close(a, b)
