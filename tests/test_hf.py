"""`model.name: hf`: a tiny Hugging Face model made from a config and saved locally (nothing is
downloaded), fine-tuned on real reviews with its own tokenizer by DDP and FSDP2, resumed, and
exported to ONNX with onnxruntime parity."""

import json

import pytest
import torch
import yaml

from bigmodel_ray.cli import main
from bigmodel_ray.models import build_model, shard_units
from bigmodel_ray.spec import SpecError, validate

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory, reviews_subset):
    """A 2-layer BERT (config only, random weights) and a WordPiece tokenizer trained on the
    reviews, saved together as a Hugging Face folder."""
    import pyarrow.parquet as pq
    from transformers import BertConfig, BertForSequenceClassification

    from bigmodel_ray.data.text import _trainer, new_tokenizer

    folder = tmp_path_factory.mktemp("bert")
    texts = [t for t in pq.read_table(reviews_subset, columns=["Review Text"]).column(0).to_pylist() if t]
    tokenizer = new_tokenizer("wordpiece", lowercase=True, max_length=48)
    tokenizer.train_from_iterator(texts, trainer=_trainer("wordpiece", 800))
    tokenizer.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_the_model_masks_padding_shards_by_its_blocks_and_checks_its_folder(bert_folder, tmp_path):
    model = build_model("hf", (48,), 3, path=str(bert_folder)).eval()
    ids = model.example_inputs(4, torch.Generator().manual_seed(0))[:, :20]
    padded = torch.cat([ids, torch.zeros(4, 7, dtype=ids.dtype)], dim=1)
    assert torch.allclose(model(ids), model(padded), atol=1e-5)
    assert [type(u).__name__ for u in shard_units(model)] == ["BertEmbeddings", "BertLayer", "BertLayer"]
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        build_model("hf", (48,), 3, path=str(tmp_path))
    with pytest.raises(ValueError, match="the model's embeddings"):
        build_model("hf", (48,), 3, path=str(bert_folder), vocab_size=10**6)


def test_an_hf_job_needs_text(bert_folder):
    with pytest.raises(SpecError, match="model: hf takes token ids"):
        validate({"name": "t", "data": {"source": "digits"}, "model": {"name": "hf", "args": {"path": "x"}}}, "t.yaml")


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_an_hf_model_fine_tunes_resumes_and_exports(strategy, bert_folder, reviews_subset, tmp_path, capsys):
    job = {"name": "bert", "storage": str(tmp_path / "runs"),
           "data": {"source": "text", "path": str(reviews_subset), "label_column": "Department Name",
                    "on_bad_record": "skip", "in_memory": True,
                    "text": {"columns": ["Title", "Review Text"], "tokenizer_file": str(bert_folder),
                             "vocab_size": 800, "max_length": 48}},
           "model": {"name": "hf", "args": {"path": str(bert_folder)}},
           "train": {"epochs": 2, "batch_size": 64, "strategy": strategy, "precision": "bf16",
                     "optimizer": {"lr": 0.003}}}
    path = tmp_path / "bert.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main(["run", str(path)]) == 0
    run = tmp_path / "runs" / "bert"
    first = json.loads((run / "result.json").read_text())
    assert first["test_accuracy"] > 0.5, first          # 3 departments; the largest is ~0.45 of rows

    path.write_text(yaml.safe_dump({**job, "train": {**job["train"], "epochs": 3}}))
    assert main(["run", str(path)]) == 0
    second = json.loads((run / "result.json").read_text())
    assert second["resumed_from_epoch"] == 2 and second["epochs_this_run"] == 1, second

    capsys.readouterr()
    assert main(["export", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "argmax agreement 1.0000" in printed, printed
    if strategy == "fsdp":
        return
    # Distilled into the project's small text transformer (reading the BERT tokenizer's ids), then int8
    compress = {"name": "small", "kind": "compress", "storage": str(tmp_path / "runs"),
                "compress": {"teacher": str(run), "select": {"max_accuracy_drop": 1.0},
                             "methods": [{"method": "distill", "epochs": 1,
                                          "student": {"name": "text_transformer",
                                                      "args": {"embed_dim": 16, "depth": 1, "num_heads": 2}}},
                                         {"method": "quantize", "mode": "dynamic"}]}}
    (tmp_path / "compress.yaml").write_text(yaml.safe_dump(compress))
    assert main(["run", str(tmp_path / "compress.yaml")]) == 0
    result = json.loads((tmp_path / "runs" / "small" / "result.json").read_text())
    assert result["selected"] in ("1-distill", "2-quantize"), result
