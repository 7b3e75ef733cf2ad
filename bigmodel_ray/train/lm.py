"""Causal language modelling (`train.task: lm`): the next-token objective and its metrics.

Batches are (ids, chars): token ids as the text pipeline stores them ([CLS] first, [PAD] = 0
after the text) and, per row, the characters of text its tokens cover. Every token after [CLS]
is predicted from the ones before it; padding is never a target. Evaluation reports nats per
token (`loss`), `perplexity` = exp(loss) and bits per character (`bpc`): the summed negative
log-likelihood in bits over the characters covered, comparable across tokenizers and with a
compressor's bits per character on the same text.
"""

import math

import torch
import torch.nn.functional as F

from bigmodel_ray.data.text import PAD_ID
from bigmodel_ray.train.metrics import all_reduce_sum
from bigmodel_ray.train.objectives import Classify


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood (nats) of every non-padding token after the first, and their count."""
    targets = ids[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=PAD_ID,
                          reduction="sum")
    return nll, (targets != PAD_ID).sum()


class NextToken(Classify):
    """Next-token cross-entropy on the `train` split, averaged over a batch's tokens."""

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        ids, _ = batch
        nll, tokens = next_token_nll(model(ids), ids)
        return nll / tokens.clamp(min=1), len(ids)

    def scores(self, num_classes: int, device) -> "TokenScores":
        return TokenScores(device)


class TokenScores:
    """An evaluation pass's running sums: negative log-likelihood, tokens, characters, rows."""

    def __init__(self, device):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, ids: torch.Tensor, chars: torch.Tensor) -> None:
        nll, tokens = next_token_nll(logits, ids)
        self.sums += torch.stack([nll.double(), tokens.double(), chars.sum().double(),
                                  torch.tensor(len(ids), dtype=torch.float64, device=ids.device)])

    def result(self) -> dict[str, float]:
        nll, tokens, chars, rows = all_reduce_sum(self.sums).tolist()
        loss = nll / max(tokens, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bpc": nll / math.log(2) / max(chars, 1),
                "count": int(rows)}
