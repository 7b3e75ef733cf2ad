"""Turning stored images into pixels: decode (OpenCV), convert colour, resize.

Images travel through the pipeline as uint8 (n, H, W, C) arrays, the layout OpenCV warps.
"""

import re
from dataclasses import dataclass

import cv2
import numpy as np


class BadRecord(ValueError):
    """An image that cannot be decoded or has the wrong shape; the message names where it came from."""


def bad_record_in(e: BaseException) -> str | None:
    """The BadRecord message behind a worker failure (it arrives wrapped in Ray's task errors)."""
    pending = [e, *getattr(e, "worker_failures", {}).values()]
    seen = set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if match := re.search(r"BadRecord: (.+)", str(exc)):
            return match[1].strip()
        pending += [exc.__cause__, exc.__context__, getattr(exc, "cause", None)]
    return None


@dataclass(frozen=True)
class ImageFormat:
    """What the model sees: every image is decoded/resized to (height, width, channels)."""
    height: int
    width: int
    channels: int                       # 3 (RGB) or 1 (grayscale)
    resize: bool = False                # resize to (height, width); else a different size is an error

    @classmethod
    def of(cls, data_spec, first_image_hw: tuple[int, int]) -> "ImageFormat":
        channels = 1 if data_spec.color_mode == "grayscale" else 3
        if data_spec.target_size:
            return cls(*data_spec.target_size, channels, resize=True)
        return cls(*first_image_hw, channels)


def decode(data: bytes, fmt: ImageFormat, origin: str) -> np.ndarray:
    """PNG/JPEG/BMP/... bytes -> uint8 (H, W, C) RGB or grayscale, fitted to `fmt`."""
    return fit(decode_any(data, fmt.channels, origin), fmt, origin)


def decode_any(data: bytes, channels: int, origin: str) -> np.ndarray:
    """Decode at the stored size."""
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR_RGB
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag) if data else None
    if img is None:
        raise BadRecord(f"{origin}: cannot decode image ({len(data or b'')} bytes)")
    return img.reshape(*img.shape[:2], channels)


def from_raw(data, shape: tuple[int, int, int], fmt: ImageFormat, origin: str) -> np.ndarray:
    """Raw pixels (bytes or a flat/shaped array, uint8) -> uint8 (H, W, C)."""
    arr = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else np.asarray(data)
    if arr.size != np.prod(shape):
        raise BadRecord(f"{origin}: raw image has {arr.size} values, image_shape {list(shape)} needs {np.prod(shape)}")
    img = arr.reshape(shape).astype(np.uint8, copy=False)
    if img.shape[2] != fmt.channels:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if fmt.channels == 1 else cv2.COLOR_GRAY2RGB)
    return fit(img, fmt, origin)


def fit(img: np.ndarray, fmt: ImageFormat, origin: str) -> np.ndarray:
    if img.shape[:2] != (fmt.height, fmt.width):
        if not fmt.resize:
            raise BadRecord(f"{origin}: image is {img.shape[0]}x{img.shape[1]}, the others are "
                            f"{fmt.height}x{fmt.width} (set data.target_size to resize)")
        # INTER_AREA averages when shrinking (no aliasing); bilinear when enlarging.
        shrink = img.shape[0] > fmt.height or img.shape[1] > fmt.width
        img = cv2.resize(img, (fmt.width, fmt.height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return img.reshape(fmt.height, fmt.width, fmt.channels)
