"""A declarative domain shift: the same data seen differently, to make a target domain from a
real source offline (digits -> rotated, inverted, noisy, blurred or rescaled digits).

Every sample gets the same geometric change (rotation about the centre, scale) and photometric
change (inversion, blur); each row's noise is drawn from the shift's own seed and the row (its
key, or its split and index in a built-in set), so the shifted set is the same every time. Built-in sets are
shifted whole, as floats in the set's range, when opened (sources.py); image sources are shifted
row by row as uint8 pixels in the pipeline (`shift_images`), every split alike. 1-D series
(MNIST-1D) take scale, inversion, noise and blur, not rotation.
"""

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Shift:
    """The spec's `data.shift` for the pipeline's tasks (a plain dataclass: no spec import there)."""
    rotation: float = 0.0
    scale: float = 1.0
    invert: bool = False
    noise: float = 0.0
    blur: float = 0.0
    seed: int = 0


def shift_images(images: np.ndarray, shift, keys: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W, C) images -> shifted uint8 images; each row's noise seeded by its key."""
    x = apply_shift(images.transpose(0, 3, 1, 2), shift, lo=0.0, hi=255.0, seeds=keys)
    return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))


def apply_shift(x: np.ndarray, shift, lo: float | None = None, hi: float | None = None,
                seeds: np.ndarray | None = None) -> np.ndarray:
    """x: (N, C, H, W) images or (N, C, L) series; returns a new float32 array.

    lo, hi: the value range (inversion, noise scale, border fill); default x's own min and max —
    pass the whole set's range when x is only part of it, or every part gets its own.
    seeds: one per sample (a stable row key): its noise comes from (shift.seed, key) whatever batch
    it is in; without, one draw from shift.seed covers the whole array.
    """
    out = x.astype(np.float32, order="C", copy=True)      # C order: the reshapes below are views we write to
    if not len(out):         # an empty split (val_fraction: 0) or a batch with no rows in this split
        return out
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    if out.ndim == 4 and (shift.rotation or shift.scale != 1.0):
        n, c, h, w = out.shape
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), shift.rotation, shift.scale)
        planes = out.reshape(n * c, h, w)
        for i in range(len(planes)):
            planes[i] = cv2.warpAffine(planes[i], matrix, (w, h), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=lo)
    elif out.ndim == 3 and shift.scale != 1.0:     # stretch a series about its centre
        length = out.shape[-1]
        centre = (length - 1) / 2
        positions = centre + (np.arange(length) - centre) / shift.scale
        out = np.stack([[np.interp(positions, np.arange(length), s, left=s[0], right=s[-1]) for s in sample]
                        for sample in out]).astype(np.float32)
    if shift.blur:
        size = 2 * int(np.ceil(3 * shift.blur)) + 1
        flat = out.reshape(-1, *out.shape[2:]) if out.ndim == 4 else out.reshape(-1, 1, out.shape[-1])
        for i in range(len(flat)):
            kernel = (size, size) if out.ndim == 4 else (size, 1)
            flat[i] = cv2.GaussianBlur(flat[i], kernel, shift.blur, borderType=cv2.BORDER_REPLICATE)
    if shift.invert:
        out = lo + hi - out
    if shift.noise:
        sigma = shift.noise * (hi - lo)
        if seeds is None:
            out = out + np.random.default_rng(shift.seed).normal(0.0, sigma, size=out.shape).astype(np.float32)
        else:
            for i, key in enumerate(seeds):
                rng = np.random.default_rng((shift.seed, int(key)))
                out[i] += rng.normal(0.0, sigma, out.shape[1:]).astype(np.float32)
    return out
