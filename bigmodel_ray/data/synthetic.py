"""Deterministic, learnable synthetic images of any count, size and number of classes.

Image `i` is a function of (split_seed, i) alone, so rows are generated lazily, in parallel, in
any order. Class c is a sinusoidal grating: horizontal or vertical stripes (c % 2) at a spatial
frequency band (c // 2: 2, 3.2, 5.1, ... cycles across the image, x1.6 per band); phase, exact
frequency (+-5 %), colour tint, a bright blob and pixel noise vary per image. The classes
survive the usual augmentation — flips, rotations up to ~30 degrees, zoom within [0.8, 1.2] —
so augmented training still learns. Up to ~10 classes fit below the Nyquist limit at 32x32.
"""

import numpy as np


def class_of(ids: np.ndarray, num_classes: int, split_seed: int) -> np.ndarray:
    # A fixed pseudo-random permutation of ids -> balanced classes, not in id order.
    mixed = (ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(split_seed)) >> np.uint64(33)
    return (mixed % np.uint64(num_classes)).astype(np.int64)


def generate(ids: np.ndarray, size: int, num_classes: int, channels: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, size, size, channels) images and int64 labels for the given row ids."""
    labels = class_of(ids, num_classes, split_seed)
    coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    out = np.empty((len(ids), size, size, channels), np.uint8)
    for row, (i, c) in enumerate(zip(ids, labels)):
        rng = np.random.default_rng((split_seed, int(i)))
        theta = np.pi / 2 * (c % 2) + rng.normal(0, 0.05)
        cycles = 2.0 * 1.6 ** (c // 2) * rng.uniform(0.95, 1.05)     # cycles across the image
        wave = np.sin(2 * np.pi * cycles * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 2 * np.pi))
        bx, by = rng.uniform(-0.3, 0.3, 2)
        blob = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / 0.02)
        tint = rng.uniform(0.5, 1.0, channels)
        img = 128 + 70 * wave[..., None] * tint + 50 * blob[..., None] + rng.normal(0, 12, (size, size, channels))
        out[row] = np.clip(img, 0, 255)
    return out, labels
