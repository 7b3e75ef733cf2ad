"""Small residual conv nets: `cnn1d` for sequences (MNIST-1D), `cnn2d` for images."""

import torch
import torch.nn as nn

from bigmodel_ray.models.limits import check_layers, check_positive


class _ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a (strided 1x1 when shapes change) shortcut, then ReLU."""

    def __init__(self, conv: type[nn.Module], norm: type[nn.Module], c_in: int, c_out: int, stride: int, kernel: int):
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(
            conv(c_in, c_out, kernel, stride=stride, padding=pad, bias=False), norm(c_out), nn.ReLU(inplace=True),
            conv(c_out, c_out, kernel, padding=pad, bias=False), norm(c_out),
        )
        self.shortcut = (
            nn.Identity() if stride == 1 and c_in == c_out
            else nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False), norm(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class _ResNet(nn.Module):
    conv: type[nn.Module]
    norm: type[nn.Module]
    pool: type[nn.Module]

    def __init__(self, input_shape, num_classes, channels=(32, 64), blocks_per_stage: int = 1,
                 kernel_size: int = 3, dropout: float = 0.1, stem_stride: int = 1):
        super().__init__()
        for width in channels:
            check_positive("every entry of channels", width)
        check_positive("blocks_per_stage", blocks_per_stage)
        if isinstance(blocks_per_stage, int):
            check_layers("len(channels) * blocks_per_stage", len(channels) * blocks_per_stage)
        c_in = input_shape[0]
        # stem_stride > 1 downsamples at once, as ResNet's stem does for large images (224x224).
        stem_kernel = kernel_size if stem_stride == 1 else max(kernel_size, 2 * stem_stride - 1)
        self.stem = nn.Sequential(
            self.conv(c_in, channels[0], stem_kernel, stride=stem_stride, padding=stem_kernel // 2, bias=False),
            self.norm(channels[0]), nn.ReLU(inplace=True),
        )
        blocks, c = [], channels[0]
        for stage, width in enumerate(channels):
            for i in range(blocks_per_stage):
                # Downsample at the first block of every stage after the first.
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_ResidualBlock(self.conv, self.norm, c, width, stride, kernel_size))
                c = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(self.pool(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def shard_units(self):
        return [self.stem, *self.blocks, self.head]


class CNN1d(_ResNet):
    """Input (channels, length), e.g. MNIST-1D's (1, 40)."""

    conv, norm, pool = nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d

    def __init__(self, input_shape, num_classes, channels=(32, 64, 128), blocks_per_stage: int = 1,
                 kernel_size: int = 5, dropout: float = 0.1, stem_stride: int = 1):
        super().__init__(input_shape, num_classes, channels, blocks_per_stage, kernel_size, dropout, stem_stride)


class CNN2d(_ResNet):
    """Input (channels, height, width), e.g. digits' (1, 8, 8)."""

    conv, norm, pool = nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d

    def __init__(self, input_shape, num_classes, channels=(32, 64), blocks_per_stage: int = 1,
                 kernel_size: int = 3, dropout: float = 0.1, stem_stride: int = 1):
        super().__init__(input_shape, num_classes, channels, blocks_per_stage, kernel_size, dropout, stem_stride)
