"""A declarative domain shift: the same data seen differently, to make a target domain from a
real source offline (digits -> rotated, inverted, noisy, blurred or rescaled digits).

Every sample gets the same geometric change (rotation about the centre, scale) and photometric
change (inversion, blur); noise is drawn per sample from the shift's own seed, so the shifted set
is the same every time. Values are floats in the source's range; 1-D series (MNIST-1D) take
scale, inversion, noise and blur, not rotation.
"""

import cv2
import numpy as np


def apply_shift(x: np.ndarray, shift) -> np.ndarray:
    """x: (N, C, H, W) images or (N, C, L) series, float32; returns a new array."""
    out = x.astype(np.float32, copy=True)
    lo, hi = float(x.min()), float(x.max())
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
        rng = np.random.default_rng(shift.seed)
        out = out + rng.normal(0.0, shift.noise * (hi - lo), size=out.shape).astype(np.float32)
    return out
