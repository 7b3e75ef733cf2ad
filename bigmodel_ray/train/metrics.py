"""Classification metrics from a confusion matrix, summed over every worker's share of a split."""

import torch
import torch.distributed as dist
import torch.nn.functional as F


class ClassScores:
    """An evaluation pass's running sums for a classifier: confusion matrix and summed loss."""

    def __init__(self, num_classes: int, device):
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        self.confusion += confusion_matrix(y, logits.argmax(-1), self.num_classes)

    def result(self) -> dict[str, float]:
        """Every rank's sums added up (a collective: all ranks call it)."""
        totals = all_reduce_sum(torch.cat([self.confusion.flatten().double(), self.loss_sum.view(1)]))
        return summarize(totals[:-1].view(self.num_classes, self.num_classes), totals[-1].item())


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class."""
    flat = targets.to(torch.int64) * num_classes + preds.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def summarize(confusion: torch.Tensor, loss_sum: float) -> dict[str, float]:
    """Loss, accuracy and macro-F1 (classes absent from both targets and predictions are skipped)."""
    cm = confusion.double().cpu()
    total = cm.sum().item()
    tp = cm.diag()
    support, predicted = cm.sum(1), cm.sum(0)
    denom = support + predicted
    present = denom > 0
    f1 = (2 * tp[present] / denom[present]).mean().item() if present.any() else 0.0
    return {
        "loss": loss_sum / max(total, 1),
        "accuracy": tp.sum().item() / max(total, 1),
        "f1": f1,
        "count": int(total),
    }
