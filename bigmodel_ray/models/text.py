"""Transformer classifier over token ids (text): the project's encoder blocks, padding masked.

Input: int64 (batch, tokens) ids as the data pipeline stores them: [CLS] first, padded with
id 0 at the end (data/text.py). The padding mask is derived from the ids, so the model takes the
same single tensor as every other model (and exports to ONNX with one input).
"""

import torch
import torch.nn as nn

from bigmodel_ray.models.limits import check_layers
from bigmodel_ray.models.transformer import EncoderBlock

POOLINGS = ("mean", "cls", "max")


class TextTransformer(nn.Module):
    """Token embeddings + learned positions -> encoder blocks -> pooled -> logits.

    pooling: `mean` of the non-padding tokens, the `cls` token's output, or their `max`.
    """

    def __init__(self, input_shape, num_classes, vocab_size: int = 8000, embed_dim: int = 128, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 2.0, dropout: float = 0.1, pooling: str = "mean"):
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"text_transformer expects token ids (max_length,), got {tuple(input_shape)}: "
                             f"use a text source (data.text)")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {' | '.join(POOLINGS)} (got {pooling!r})")
        if vocab_size < 1 or embed_dim < 1 or depth < 1:
            raise ValueError("vocab_size, embed_dim and depth must be >= 1")
        check_layers("depth", depth)
        self.pooling, self.vocab_size, self.max_length = pooling, vocab_size, input_shape[0]
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, input_shape[0], embed_dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(embed_dim, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        x = self.embed(ids) + self.pos[:, :ids.shape[1]]
        for block in self.blocks:
            x = block(x, key_padding_mask=pad)
        x = self.norm(x)
        if self.pooling == "cls":
            pooled = x[:, 0]
        elif self.pooling == "max":
            pooled = x.masked_fill(pad[..., None], float("-inf")).max(dim=1).values
        else:
            keep = (~pad).unsqueeze(-1).to(x.dtype)
            pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.head(pooled)

    def shard_units(self):
        return list(self.blocks)

    def example_inputs(self, n: int, generator=None) -> torch.Tensor:
        """`n` rows of random ids as the pipeline stores them: [CLS] first, some rows padded."""
        ids = torch.randint(5, self.vocab_size, (n, self.max_length), generator=generator)
        ids[:, 0] = 2
        lengths = torch.randint(2, self.max_length + 1, (n,), generator=generator)
        return ids.masked_fill(torch.arange(self.max_length) >= lengths[:, None], 0)


class TextLM(TextTransformer):
    """Causal language model: the same embeddings and blocks, each position attending to itself
    and the positions before it, and logits over the vocabulary at every position (`task: lm`).

    Parameter names are the classifier's, only `head` differs in shape: a classifier fine-tuned
    from a pretrained LM loads everything but the head (`model.init_from`, init_strict: false).
    """

    def __init__(self, input_shape, num_classes=None, vocab_size: int = 8000, embed_dim: int = 128, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 2.0, dropout: float = 0.1):
        super().__init__(input_shape, vocab_size, vocab_size, embed_dim, depth, num_heads, mlp_ratio, dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(batch, tokens) ids -> (batch, tokens, vocab) logits of the next token."""
        t = ids.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
        # Padding comes only after a row's text, and a causal query never sees later keys, so
        # the causal mask alone keeps text positions from attending to padding.
        x = self.embed(ids) + self.pos[:, :t]
        for block in self.blocks:
            x = block(x, attn_mask=causal)
        return self.head(self.norm(x))

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 generator: torch.Generator | None = None, stop: int | None = None) -> torch.Tensor:
        """Extend one row of ids by up to `new_tokens`: greedy at temperature 0, else sampled
        from the softmax at `temperature`, over the `top_k` likeliest tokens when top_k > 0.
        Stops at `stop` or when the context is full (max_length tokens)."""
        ids = ids[None] if ids.dim() == 1 else ids
        for _ in range(min(new_tokens, self.max_length - ids.shape[1])):
            logits = self(ids)[0, -1].float()
            logits[0] = float("-inf")                             # never [PAD]
            if temperature <= 0:
                token = logits.argmax()
            else:
                if top_k > 0:
                    cut = logits.topk(min(top_k, len(logits))).values[-1]
                    logits = logits.masked_fill(logits < cut, float("-inf"))
                token = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[0]
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
            if stop is not None and int(token) == stop:
                break
        return ids[0]
