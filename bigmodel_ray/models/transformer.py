"""Encoder-only transformer classifier with explicit multi-head self-attention.

Attention is written out (rather than calling `nn.MultiheadAttention`) so that each step is
visible: project to Q, K, V; split `embed_dim` into `num_heads` heads of `head_dim`; per head
softmax(Q K^T / sqrt(head_dim)) V; merge heads; output projection. Scaling by sqrt(head_dim),
not sqrt(embed_dim), keeps the logits' variance near 1 whatever the number of heads.
"""

import math

import torch
import torch.nn as nn

from bigmodel_ray.models.limits import check_layers, check_positive


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        check_positive("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, tokens, embed_dim).

        attn_mask: (tokens, tokens) or (batch, heads, tokens, tokens); bool with True = may
            attend (as in `F.scaled_dot_product_attention`), or float added to the logits.
        key_padding_mask: (batch, tokens) bool, True = padding that no query may attend to.
        """
        b, t, _ = x.shape
        # (b, t, 3, heads, head_dim) -> three tensors of (b, heads, t, head_dim)
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            else:
                logits = logits + attn_mask
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        weights = self.dropout(torch.softmax(logits, dim=-1))
        merged = (weights @ v).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.out(merged)


class EncoderBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = MultiHeadSelfAttention(embed_dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        hidden = int(embed_dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, embed_dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, attn_mask=None, key_padding_mask=None):
        x = x + self.drop(self.attn(self.norm1(x), attn_mask, key_padding_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class TransformerClassifier(nn.Module):
    """Patches -> linear embedding + learned positions + [CLS] -> encoder blocks -> logits.

    Works on (channels, length) sequences (patches of `patch_size` steps, stride `patch_stride`)
    and (channels, height, width) images (non-overlapping `patch_size` squares).
    """

    def __init__(self, input_shape, num_classes, embed_dim: int = 64, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 2.0, patch_size: int = 4, patch_stride: int | None = None,
                 dropout: float = 0.1):
        super().__init__()
        check_layers("depth", depth)
        check_positive("patch_size", patch_size)
        check_positive("patch_stride", patch_stride)
        channels, *spatial = input_shape
        stride = patch_stride or patch_size
        if len(spatial) == 1:
            self.patchify = nn.Conv1d(channels, embed_dim, patch_size, stride=stride)
            num_tokens = (spatial[0] - patch_size) // stride + 1
        elif len(spatial) == 2:
            self.patchify = nn.Conv2d(channels, embed_dim, patch_size, stride=patch_size)
            num_tokens = (spatial[0] // patch_size) * (spatial[1] // patch_size)
        else:
            raise ValueError(f"transformer expects (C, L) or (C, H, W) inputs, got {tuple(input_shape)}")
        if num_tokens < 1:
            raise ValueError(f"patch_size {patch_size} is larger than the inputs {tuple(spatial)}")
        self.cls = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos = nn.Parameter(torch.randn(1, num_tokens + 1, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(embed_dim, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patchify(x).flatten(2).transpose(1, 2)          # (b, tokens, embed_dim)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, 0]))

    def shard_units(self):
        return list(self.blocks)
