"""Language models of text (train.task: lm): causal attention, the next-token loss and its bits
per character, generation, the spec's pairing of task and model, and (slow) a real 2-worker LM
run whose weights and tokenizer a classifier then starts from."""

import csv
import json
import math

import pytest
import torch
import yaml
from test_text import TEXT, _batch, _transform

from bigmodel_ray.cli import main
from bigmodel_ray.data.text import PAD_ID, TextTransform, tokenize_batch
from bigmodel_ray.models import build_model
from bigmodel_ray.spec import SpecError, validate
from bigmodel_ray.train.lm import NextToken, TokenScores, next_token_nll

LM = {"name": "text_lm", "args": {"vocab_size": 50, "embed_dim": 16, "depth": 2, "num_heads": 2, "dropout": 0.0}}


def _lm(max_length=12):
    torch.manual_seed(0)
    return build_model(LM["name"], (max_length,), 50, **LM["args"]).eval()


def test_a_position_sees_only_the_tokens_before_it():
    model, ids = _lm(), torch.randint(5, 50, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = torch.randint(5, 50, (2, 4))
    a, b = model(ids), model(changed)
    assert a.shape == (2, 10, 50)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6) and not torch.allclose(a[:, 6:], b[:, 6:])


def test_padding_is_never_a_target_and_bits_per_character_sum_over_the_covered_text():
    logits = torch.randn(2, 5, 50)
    ids = torch.tensor([[2, 7, 8, 9, 10], [2, 7, 8, PAD_ID, PAD_ID]])
    nll, tokens = next_token_nll(logits, ids)
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1),
                                                  reduction="none").view(2, 4)
    assert int(tokens) == 6 and torch.isclose(nll, per_token[0].sum() + per_token[1, :2].sum())
    scores = TokenScores(torch.device("cpu"))
    scores.add(logits, ids, torch.tensor([20, 9]))
    result = scores.result()
    assert math.isclose(result["bpc"], nll.item() / math.log(2) / 29, rel_tol=1e-6)
    assert math.isclose(result["perplexity"], math.exp(nll.item() / 6), rel_tol=1e-6) and result["count"] == 2
    loss, rows = NextToken().loss(lambda x: logits, (ids, None))
    assert rows == 2 and torch.isclose(loss, nll / 6)


def test_a_language_models_rows_carry_the_characters_their_tokens_cover():
    t = _transform(max_length=6)
    lm = TextTransform(**{**t.__dict__, "label_column": None, "classes": None})
    out = tokenize_batch(_batch(["tops", "a"], ["are fine", "lovely dress that runs small and more"], [None, None]), lm)
    assert out["y"].tolist()[0] == len("tops\nare fine")              # all of it
    assert 0 < out["y"].tolist()[1] < len("a\nlovely dress that runs small and more")   # truncated: what is kept


def test_greedy_generation_repeats_and_top_1_sampling_is_greedy():
    model, prompt = _lm(), torch.tensor([2, 7, 8])
    greedy = model.generate(prompt, 5)
    assert torch.equal(greedy, model.generate(prompt, 5)) and len(greedy) == 8
    assert torch.equal(greedy[:3], prompt)
    assert torch.equal(model.generate(prompt, 5, temperature=1.0, top_k=1, generator=torch.Generator()), greedy)
    assert len(model.generate(torch.arange(2, 12), 5)) == 12        # the context is full at max_length
    assert PAD_ID not in model.generate(prompt, 9, temperature=5.0, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("job, message", [
    ({"model": {"name": "text_lm"}}, "train.task: classify trains classifiers, and model.name is text_lm"),
    ({"model": {"name": "text_transformer"}, "train": {"task": "lm"}}, "train.task: lm trains text_lm"),
    ({"model": {"name": "text_lm"}, "train": {"task": "lm"}, "kind": "compress",
      "compress": {"methods": [{"method": "quantize"}]}}, "train.task: lm trains in a kind train job"),
])
def test_task_and_model_go_together(job, message):
    with pytest.raises(SpecError, match=message):
        validate({"name": "t", "data": TEXT, **job}, "t.yaml")
    validate({"name": "t", "data": TEXT, "model": {"name": "text_lm"}, "train": {"task": "lm"}}, "t.yaml")


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_language_model_run_generates_and_a_classifier_starts_from_it(reviews_subset, tmp_path, capsys):
    text = {"columns": ["Title", "Review Text"], "vocab_size": 1000, "max_length": 48}
    lm = {"name": "lm", "storage": str(tmp_path / "runs"),
          "data": {"source": "text", "path": str(reviews_subset), "on_bad_record": "skip", "in_memory": True,
                   "text": text},
          "model": {"name": "text_lm", "args": {"embed_dim": 32, "depth": 1, "num_heads": 2}},
          "train": {"task": "lm", "epochs": 2, "batch_size": 64, "optimizer": {"lr": 0.005}}}
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(lm))
    assert main(["run", str(tmp_path / "lm.yaml")]) == 0
    run = tmp_path / "runs" / "lm"
    result = json.loads((run / "result.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs[1]["val_bpc"] < epochs[0]["val_bpc"], epochs
    assert 0 < result["test_bpc"] < 8 and result["test_gzip_bpc"] > 0 and result["test_chars"] > 10_000, result
    assert math.isclose(result["test_perplexity"], math.exp(epochs[-1]["test_loss"]), rel_tol=1e-6)

    capsys.readouterr()
    outputs = [main(["generate", str(run), "--prompt", "this dress"]) or capsys.readouterr().out for _ in range(2)]
    assert outputs[0] == outputs[1] and outputs[0].startswith("this dress") and len(outputs[0]) > 15, outputs

    clf = {**lm, "name": "clf", "data": {**lm["data"], "label_column": "Department Name",
                                         "text": {**text, "tokenizer_file": str(run)}},
           "model": {"name": "text_transformer", "args": lm["model"]["args"], "init_from": str(run),
                     "init_strict": False},
           "train": {"epochs": 1, "batch_size": 64, "optimizer": {"lr": 0.003}}}
    (tmp_path / "clf.yaml").write_text(yaml.safe_dump(clf))
    assert main(["run", str(tmp_path / "clf.yaml")]) == 0
    assert (tmp_path / "runs" / "clf" / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()
    assert json.loads((tmp_path / "runs" / "clf" / "result.json").read_text())["test_accuracy"] > 0.5

    # The same as a transfer job: the LM run as the source, its tokenizer and classifier counterpart implied
    transfer = {"name": "tr", "kind": "transfer", "storage": str(tmp_path / "runs"),
                "data": {**lm["data"], "label_column": "Department Name"},
                "transfer": {"source": str(run), "strategy": "discriminative", "backbone_lr_factor": 0.3},
                "train": {"epochs": 1, "batch_size": 64, "optimizer": {"lr": 0.003}}}
    (tmp_path / "tr.yaml").write_text(yaml.safe_dump(transfer))
    assert main(["run", str(tmp_path / "tr.yaml")]) == 0
    tr = tmp_path / "runs" / "tr"
    assert yaml.safe_load((tr / "spec.yaml").read_text())["model"]["name"] == "text_transformer"
    assert (tr / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()
    assert json.loads((tr / "result.json").read_text())["test_accuracy"] > 0.5
    assert main(["export", str(tr)]) == 0


def test_init_from_a_run_folder_reads_its_final_checkpoint(tmp_path):
    from bigmodel_ray.train.init import init_from
    from bigmodel_ray.train.state import save_state

    lm, clf = _lm(), build_model("text_transformer", (12,), 3, **LM["args"])
    (tmp_path / "checkpoint_1").mkdir()
    save_state({"model": lm.state_dict(), "meta": {}}, tmp_path / "checkpoint_1")
    (tmp_path / "result.json").write_text(json.dumps({"checkpoint": str(tmp_path / "checkpoint_1")}))
    with pytest.raises(ValueError, match=r"2 mis-shaped \(head.weight \[50, 16\] vs \[3, 16\]"):
        init_from(clf, tmp_path)
    assert init_from(clf, tmp_path, strict=False) == len(lm.state_dict()) - 2          # all but the head
    assert torch.equal(clf.embed.weight, lm.embed.weight) and torch.equal(clf.blocks[0].mlp[0].weight,
                                                                          lm.blocks[0].mlp[0].weight)
    with pytest.raises(ValueError, match="not a finished run"):
        init_from(clf, tmp_path / "checkpoint_1")


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_language_model_sweep_and_a_text_model_compressed(reviews_subset, tmp_path):
    text = {"columns": ["Title", "Review Text"], "vocab_size": 1000, "max_length": 32}
    data = {"source": "text", "path": str(reviews_subset), "on_bad_record": "skip", "in_memory": True, "text": text}
    sweep = {"name": "lm_sweep", "storage": str(tmp_path / "runs"), "data": data,
             "model": {"name": "text_lm", "args": {"embed_dim": 16, "depth": 1, "num_heads": 2}},
             "train": {"task": "lm", "epochs": 1, "batch_size": 64},
             "resources": {"workers": 1}, "search": {"space": {"train.optimizer.lr": "grid([0.0003, 0.01])"},
                                                     "metric": "val_bpc"}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["run", str(tmp_path / "sweep.yaml")]) == 0
    best = json.loads((tmp_path / "runs" / "lm_sweep" / "result.json").read_text())
    assert best["best"]["config"]["train.optimizer.lr"] == 0.01, best      # 1 epoch: the larger step learns more

    clf = {"name": "clf", "storage": str(tmp_path / "runs"), "data": {**data, "label_column": "Department Name"},
           "model": {"name": "text_transformer", "args": {"embed_dim": 32, "depth": 2, "num_heads": 2}},
           "train": {"epochs": 2, "batch_size": 64, "optimizer": {"lr": 0.003}}}
    (tmp_path / "clf.yaml").write_text(yaml.safe_dump(clf))
    assert main(["run", str(tmp_path / "clf.yaml")]) == 0
    compress = {"name": "small", "kind": "compress", "storage": str(tmp_path / "runs"),
                "compress": {"teacher": str(tmp_path / "runs" / "clf"), "select": {"max_accuracy_drop": 1.0},
                             "methods": [{"method": "distill", "epochs": 1,
                                          "student": {"name": "text_transformer",
                                                      "args": {"embed_dim": 16, "depth": 1, "num_heads": 2}}},
                                         {"method": "prune", "structured": True, "amount": 0.5},
                                         {"method": "quantize", "mode": "dynamic"}]}}
    (tmp_path / "compress.yaml").write_text(yaml.safe_dump(compress))
    assert main(["run", str(tmp_path / "compress.yaml")]) == 0
    with (tmp_path / "runs" / "small" / "candidates.csv").open() as f:
        rows = {row["candidate"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["teacher", "1-distill", "2-prune", "3-quantize"], rows
    params = [int(rows[name]["params"]) for name in ("teacher", "1-distill", "2-prune")]
    assert params[0] > params[1] > params[2], params           # the student reads the teacher's 1,000 tokens
    assert (tmp_path / "runs" / "small" / "selected.onnx").exists()
