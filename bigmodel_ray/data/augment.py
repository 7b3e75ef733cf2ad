"""Per-sample random image augmentation in the style of Keras' ImageDataGenerator, done fast.

Every geometric op (flip, zoom, shear, rotation, shift) is a 3x3 matrix about the image
centre; their product is applied in ONE `cv2.warpAffine` per image, so each image is resampled
once whatever the number of ops (ImageDataGenerator resamples with scipy.ndimage, ~20x slower).
Random parameters are drawn per sample from a numpy Generator the caller seeds (job seed,
epoch, worker, batch), so a batch is reproducible and every sample differs.

Conventions: images are uint8 or float32 arrays (n, height, width, channels); a positive angle
turns the content counter-clockwise as displayed; positive shifts move it right and down.
"""

from dataclasses import dataclass

import cv2
import numpy as np

BORDER_MODES = {
    "nearest": cv2.BORDER_REPLICATE,     # aaaa|abcd|dddd
    "constant": cv2.BORDER_CONSTANT,     # kkkk|abcd|kkkk
    "reflect": cv2.BORDER_REFLECT,       # dcba|abcd|dcba  (scipy's and Keras' "reflect")
    "wrap": cv2.BORDER_WRAP,             # abcd|abcd|abcd
}


@dataclass(frozen=True)
class AugmentConfig:
    rotation_range: float = 0.0                    # degrees: uniform in [-r, r]
    width_shift_range: float = 0.0                 # fraction of the width: uniform in [-s, s]
    height_shift_range: float = 0.0
    shear_range: float = 0.0                       # degrees: uniform in [-s, s]
    zoom_range: tuple[float, float] = (1.0, 1.0)   # scale factors, x and y drawn independently
    horizontal_flip: bool = False                  # each with probability 1/2
    vertical_flip: bool = False
    fill_mode: str = "nearest"                     # nearest | constant | reflect | wrap
    cval: float = 0.0                              # fill value for "constant"
    brightness_range: tuple[float, float] | None = None   # multiply pixel values by U(lo, hi)


def affine_matrix(height: int, width: int, *, angle=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0,
                  flip_h=False, flip_v=False) -> np.ndarray:
    """The 2x3 forward matrix (source pixel -> output pixel) of the composed transform.

    Order, applied to the content: flip, zoom, shear, rotate, then shift; all about the
    centre of the pixel grid ((w-1)/2, (h-1)/2) so that flips and 90-degree turns are exact.
    """
    cx, cy = (width - 1) / 2, (height - 1) / 2
    to_origin = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=np.float64)
    flip = np.diag([-1.0 if flip_h else 1.0, -1.0 if flip_v else 1.0, 1.0])
    zoom = np.diag([zx, zy, 1.0])
    s = np.deg2rad(shear)
    shear_m = np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    a = np.deg2rad(angle)   # y points down in images: this turns content counter-clockwise on screen
    rotate = np.array([[np.cos(a), np.sin(a), 0], [-np.sin(a), np.cos(a), 0], [0, 0, 1]])
    back = np.array([[1, 0, cx + tx], [0, 1, cy + ty], [0, 0, 1]], dtype=np.float64)
    return (back @ rotate @ shear_m @ zoom @ flip @ to_origin)[:2]


# Uniform draws per sample, in this order; each parameter is a fixed function of its own column,
# so the same (seed, epoch, key) gives the same transform whatever the batch it lands in.
_DRAWS = ("angle", "shear", "tx", "ty", "zx", "zy", "flip_h", "flip_v", "brightness")


def draws_for_keys(keys, seed: int, epoch: int) -> np.ndarray:
    """(n, len(_DRAWS)) uniforms in [0, 1): row i depends only on (seed, epoch, keys[i])."""
    return np.stack([np.random.default_rng((seed, epoch, int(k) & (2**63 - 1))).random(len(_DRAWS))
                     for k in keys]) if len(keys) else np.zeros((0, len(_DRAWS)))


def params_from_draws(cfg: AugmentConfig, u: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Map uniforms to (n, 2, 3) warp matrices and (n,) brightness factors (None if unused)."""
    col = dict(zip(_DRAWS, u.T))

    def symmetric(name, r):
        return (2 * col[name] - 1) * r

    lo, hi = cfg.zoom_range
    angle, shear = symmetric("angle", cfg.rotation_range), symmetric("shear", cfg.shear_range)
    tx, ty = symmetric("tx", cfg.width_shift_range) * width, symmetric("ty", cfg.height_shift_range) * height
    zx, zy = lo + (hi - lo) * col["zx"], lo + (hi - lo) * col["zy"]
    flip_h = cfg.horizontal_flip & (col["flip_h"] < 0.5)
    flip_v = cfg.vertical_flip & (col["flip_v"] < 0.5)
    matrices = np.stack([affine_matrix(height, width, angle=angle[i], tx=tx[i], ty=ty[i], shear=shear[i], zx=zx[i],
                                       zy=zy[i], flip_h=flip_h[i], flip_v=flip_v[i]) for i in range(len(u))]) \
        if len(u) else np.zeros((0, 2, 3))
    brightness = None
    if cfg.brightness_range is not None:
        b_lo, b_hi = cfg.brightness_range
        brightness = b_lo + (b_hi - b_lo) * col["brightness"]
    return matrices, brightness


def sample_matrices(cfg: AugmentConfig, n: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2, 3) independent random transforms."""
    return params_from_draws(cfg, rng.random((n, len(_DRAWS))), height, width)[0]


_IDENTITY = np.array([[1.0, 0, 0], [0, 1.0, 0]])


def warp_batch(images: np.ndarray, matrices: np.ndarray, fill_mode: str = "nearest", cval: float = 0.0) -> np.ndarray:
    """Apply one affine warp per image (bilinear; identity transforms are copied untouched)."""
    if fill_mode not in BORDER_MODES:
        raise ValueError(f"fill_mode must be one of {' | '.join(BORDER_MODES)} (got {fill_mode!r})")
    n, h, w = images.shape[:3]
    out = np.empty_like(images)
    for i in range(n):
        if np.array_equal(matrices[i], _IDENTITY):
            out[i] = images[i]
            continue
        warped = cv2.warpAffine(images[i], matrices[i], (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=BORDER_MODES[fill_mode], borderValue=(cval,) * 4)
        out[i] = warped.reshape(out[i].shape)    # OpenCV drops a trailing channel axis of 1
    return out


def augment_batch(images: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator | None = None, *,
                  draws: np.ndarray | None = None) -> np.ndarray:
    """Random geometry (one resample per image), then random brightness.

    Randomness comes from `rng`, or from precomputed `draws` (see `draws_for_keys`).
    """
    n, h, w = images.shape[:3]
    u = draws if draws is not None else rng.random((n, len(_DRAWS)))
    matrices, brightness = params_from_draws(cfg, u, h, w)
    out = warp_batch(images, matrices, cfg.fill_mode, cfg.cval)
    if brightness is not None:
        out = apply_brightness(out, brightness)
    return out


def apply_brightness(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Scale pixel values; uint8 saturates at 255, float images (0..1) at 1."""
    scaled = images.astype(np.float32) * factors.reshape(-1, *([1] * (images.ndim - 1))).astype(np.float32)
    if images.dtype == np.uint8:
        return np.clip(scaled, 0, 255).astype(np.uint8)
    return np.clip(scaled, 0, 1).astype(images.dtype)
