"""Batches as stored by the data pipeline -> the model's inputs, on the training device.

Token ids (text) are trimmed to the batch's longest row: rows are stored padded to max_length,
and attention costs what the batch needs. Images and series become floats:

uint8 images are scaled to 0..1 here rather than in the pipeline (a quarter of the bytes to
move and cache); then the train split's device augmentation (`augment.on: device`) and the
per-channel normalization. Every split goes through the same steps, so val/test see exactly
the scaling and normalization that training saw.
"""

import torch


class ModelInputs:
    def __init__(self, data_spec, seed: int, device_augment_cfg=None):
        self.tokens = data_spec.text is not None
        self.ids = data_spec.interactions is not None     # [user, item, ...]: passed as they are
        norm = data_spec.normalize
        self.mean = torch.tensor(norm.mean) if norm else None
        self.std = torch.tensor(norm.std) if norm else None
        self.augment_cfg, self.seed = device_augment_cfg, seed

    def __call__(self, x: torch.Tensor, key: torch.Tensor | None = None, epoch: int = 0) -> torch.Tensor:
        if self.tokens:     # token ids padded to max_length with 0: trim to the batch's longest row
            width = int((x != 0).sum(1).max()) if len(x) else 1
            return x[:, :max(width, 1)].long()
        if self.ids:
            return x
        x = x.float().mul_(1 / 255) if x.dtype == torch.uint8 else x.float()
        if self.augment_cfg is not None and key is not None:
            from bigmodel_ray.data.pipeline import device_augment

            x = device_augment(x, key, self.augment_cfg, self.seed, epoch)
        if self.mean is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)          # images (n, C, H, W) or series (n, C, L)
            x = (x - self.mean.to(x.device).view(shape)) / self.std.to(x.device).view(shape)
        return x

    @property
    def needs_key(self) -> bool:
        return self.augment_cfg is not None
