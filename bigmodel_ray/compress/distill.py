"""Knowledge distillation: Hinton et al. (2015)'s loss for training a student from a teacher."""

import torch
import torch.nn.functional as F

from bigmodel_ray.train.objectives import Classify


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels).

    The T^2 factor keeps the soft term's gradients the same size whatever the temperature;
    `batchmean` is KL's true mean over samples (`mean` would also divide by the class count)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


class Distill(Classify):
    """Knowledge distillation as a training objective: the frozen teacher sees every batch."""

    def __init__(self, teacher: torch.nn.Module, temperature: float, alpha: float):
        super().__init__()
        self.teacher, self.temperature, self.alpha = teacher.eval(), temperature, alpha

    def loss(self, model, batch):
        x, y = batch
        teacher = self.teacher.to(x.device)
        with torch.no_grad():
            teacher_logits = teacher(x).float()
        return kd_loss(model(x).float(), teacher_logits, y, self.temperature, self.alpha), len(y)
