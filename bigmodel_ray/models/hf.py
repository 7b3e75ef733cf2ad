"""`model.name: hf`: a Hugging Face transformers model from a local folder, as a classifier.

`args.path` is a folder that `save_pretrained` wrote (config.json and weights); nothing is
downloaded (`local_files_only`). The model is loaded with a sequence-classification head for the
job's classes (a fresh head where the folder's does not fit) and reads the same int64 token ids
as every text model here: [PAD] = id 0 is padding, so the attention mask is derived from the
ids. Tokenize with the folder's own tokenizer (`data.text.tokenizer_file: FOLDER`), so ids mean
what the embeddings learnt. FSDP shards it by its transformer blocks: the module classes the
model itself names as never to be split (`_no_split_modules`, what `accelerate` uses).
"""

from pathlib import Path

import torch
import torch.nn as nn


class HFClassifier(nn.Module):
    def __init__(self, input_shape, num_classes, path: str = "", vocab_size: int | None = None):
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"hf expects token ids (max_length,), got {tuple(input_shape)}: use a text source")
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ValueError(f"path: {folder} is not a Hugging Face model folder (no config.json)")
        import transformers

        transformers.logging.set_verbosity_error()     # "newly initialized head" is what we ask for
        transformers.logging.disable_progress_bar()
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, num_labels=num_classes)
        if vocab_size is not None and vocab_size > config.vocab_size:
            raise ValueError(f"vocab_size: the tokenizer has up to {vocab_size} tokens, the model's embeddings "
                             f"{config.vocab_size} (set data.text.vocab_size to the tokenizer's size)")
        if input_shape[0] > getattr(config, "max_position_embeddings", input_shape[0]):
            raise ValueError(f"the model has {config.max_position_embeddings} positions; data.text.max_length is "
                             f"{input_shape[0]}")
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(
            folder, config=config, local_files_only=True, ignore_mismatched_sizes=True)
        self.max_length, self.vocab_size = input_shape[0], config.vocab_size

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=(ids != 0).long()).logits

    def shard_units(self) -> list[nn.Module]:
        blocks = set(getattr(self.model, "_no_split_modules", None) or ())
        return [m for m in self.model.modules() if type(m).__name__ in blocks]

    def example_inputs(self, n: int, generator=None) -> torch.Tensor:
        """`n` rows of random ids, some padded at the end ([PAD] = 0)."""
        ids = torch.randint(5, self.vocab_size, (n, self.max_length), generator=generator)
        lengths = torch.randint(2, self.max_length + 1, (n,), generator=generator)
        return ids.masked_fill(torch.arange(self.max_length) >= lengths[:, None], 0)
