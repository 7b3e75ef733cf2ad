import inspect

import pytest
import torch
import torch.nn.functional as F

from bigmodel_ray.models import DATA_ARGS, MODELS, build_model, model_arg_names, model_class, takes_tokens
from bigmodel_ray.models.transformer import MultiHeadSelfAttention

SHAPES = {"mlp": [(1, 40), (1, 8, 8)], "cnn1d": [(1, 40), (2, 33)], "cnn2d": [(1, 8, 8), (3, 16, 16)],
          "transformer": [(1, 40), (1, 8, 8), (3, 16, 16)]}


@pytest.mark.parametrize("name, shape", [(n, s) for n in MODELS if n in SHAPES for s in SHAPES[n]])
def test_models_map_inputs_to_logits(name, shape):
    model = build_model(name, shape, 10)
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", [n for n in MODELS if takes_tokens(n) and n not in ("text_lm", "hf")])
def test_token_models_map_ids_to_logits(name):     # text_lm: tests/test_lm.py; hf: tests/test_hf.py
    model = build_model(name, (16,), 10, vocab_size=100)
    ids = torch.randint(5, 100, (5, 12))
    ids[:, 0], ids[1, 6:] = 2, 0          # [CLS] first; one row padded
    out = model(ids)
    assert out.shape == (5, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def _reference(attn: MultiHeadSelfAttention, x, mask=None):
    """Q, K, V from the module's own projection, attention by PyTorch's fused kernel."""
    b, t, e = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).split(e, dim=-1)
    heads = [z.view(b, t, h, e // h).transpose(1, 2) for z in (q, k, v)]
    out = F.scaled_dot_product_attention(*heads, attn_mask=mask)
    return attn.out(out.transpose(1, 2).reshape(b, t, e))


@pytest.mark.parametrize("heads", [1, 4, 8])
def test_attention_matches_scaled_dot_product_attention(heads):
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(64, heads).eval()
    x = torch.randn(3, 11, 64)
    torch.testing.assert_close(attn(x), _reference(attn, x), atol=1e-5, rtol=1e-5)


def test_attention_masks_match_reference():
    torch.manual_seed(1)
    attn = MultiHeadSelfAttention(32, 4).eval()
    x = torch.randn(2, 6, 32)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(attn(x, attn_mask=causal), _reference(attn, x, causal), atol=1e-5, rtol=1e-5)
    additive = torch.randn(6, 6)
    torch.testing.assert_close(attn(x, attn_mask=additive), _reference(attn, x, additive), atol=1e-5, rtol=1e-5)
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])           # last 2 tokens of row 1 are padding
    allowed = ~padding[:, None, None, :]
    torch.testing.assert_close(attn(x, key_padding_mask=padding), _reference(attn, x, allowed), atol=1e-5, rtol=1e-5)


def test_attention_is_causal_under_a_causal_mask():
    attn = MultiHeadSelfAttention(16, 2).eval()
    x = torch.randn(1, 5, 16)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    changed = x.clone()
    changed[0, 4] += 10                       # a future token must not change earlier outputs
    torch.testing.assert_close(attn(x, causal)[0, :4], attn(changed, causal)[0, :4])


def test_heads_are_split_not_shared():
    # Scaling by sqrt(head_dim) with per-head softmax differs from one softmax over embed_dim.
    torch.manual_seed(2)
    attn = MultiHeadSelfAttention(32, 4).eval()
    x = torch.randn(2, 7, 32)
    single = MultiHeadSelfAttention(32, 1).eval()
    single.load_state_dict(attn.state_dict())
    assert not torch.allclose(attn(x), single(x), atol=1e-3)


@pytest.mark.parametrize("name", list(MODELS))
def test_model_arguments_read_from_source_are_the_signatures(name):
    params = set(inspect.signature(model_class(name)).parameters) - {"input_shape", "num_classes"} - DATA_ARGS
    assert model_arg_names(name) == params and params
