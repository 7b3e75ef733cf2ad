"""Turning stored images into pixels: decode (OpenCV), convert colour, resize.

Images travel through the pipeline as uint8 (n, H, W, C) arrays, the layout OpenCV warps.
Every check of one stored image raises `BadRecord` (`data.on_bad_record` decides what happens).
"""

import io
import re
from dataclasses import dataclass

import cv2
import numpy as np

# width * height an encoded image may declare: a 243 KB PNG can decode to 732 MB, so the header
# is read first (data.max_image_pixels). 64 M = 8000 x 8000, 192 MB as RGB.
MAX_IMAGE_PIXELS = 64_000_000


class BadRecord(ValueError):
    """A stored record (its image or its label) that cannot be used; the message names where it came from."""


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


def max_pixels_of(data_spec) -> int:
    return getattr(data_spec, "max_image_pixels", MAX_IMAGE_PIXELS)


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


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadRecord(f"{path}: {e.strerror or e}") from None


def decode(data: bytes, fmt: ImageFormat, origin: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """PNG/JPEG/BMP/... bytes -> uint8 (H, W, C) RGB or grayscale, fitted to `fmt`."""
    return fit(decode_any(data, fmt.channels, origin, max_pixels), fmt, origin)


def decode_any(data: bytes, channels: int, origin: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode at the stored size, once the header has shown the size is within `max_pixels`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadRecord(f"{origin}: the image column holds {type(data).__name__}, not encoded image bytes")
    _check_size(data, origin, max_pixels)
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR_RGB
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None:
        raise BadRecord(f"{origin}: cannot decode image ({len(data)} bytes)")
    return img.reshape(*img.shape[:2], channels)


def _check_size(data: bytes, origin: str, max_pixels: int) -> None:
    """Width x height from the header alone (PIL's Image.open reads no pixel data; OpenCV has no
    such call, and imdecode allocates the whole image before it fails)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Image.DecompressionBombError as e:     # over PIL's own limit (~179 M pixels)
        raise BadRecord(f"{origin}: {e}") from None
    except Exception:
        # Untrusted bytes: any failure to parse a header is an undecodable image. So only formats
        # PIL reads are decoded; every one of IMAGE_EXTENSIONS (sources.py) is.
        raise BadRecord(f"{origin}: cannot decode image ({len(data)} bytes)") from None
    if width * height > max_pixels:
        raise BadRecord(f"{origin}: image is {width}x{height} = {width * height:,} pixels, more than "
                        f"data.max_image_pixels ({max_pixels:,})")


def from_raw(data, shape: tuple[int, int, int], fmt: ImageFormat, origin: str) -> np.ndarray:
    """Raw pixels (bytes, or a flat or (H, W, C) array of whole numbers in 0..255) -> uint8 (H, W, C)."""
    if shape[2] not in (1, 3):
        raise BadRecord(f"{origin}: image_shape has {shape[2]} channels; raw pixels need 1 or 3")
    if isinstance(data, bytes | bytearray | memoryview):
        arr = np.frombuffer(data, np.uint8)
    elif isinstance(data, list | tuple | np.ndarray):
        try:
            arr = np.asarray(data)
        except ValueError:                        # ragged nested lists
            raise BadRecord(f"{origin}: raw image is not an array of pixels") from None
    else:
        raise BadRecord(f"{origin}: the image column holds {type(data).__name__}, not raw pixels")
    if arr.size != np.prod(shape) or arr.ndim == 3 and arr.shape != tuple(shape):
        raise BadRecord(f"{origin}: raw image has shape {list(arr.shape)}, image_shape is {list(shape)}")
    if arr.dtype != np.uint8:
        # Cast unchecked, 300 would wrap to 44 and -1 to 255: a wrong image, silently.
        numeric = arr.dtype.kind in "iuf"
        if not (numeric and np.all((arr >= 0) & (arr <= 255) & (arr % 1 == 0))):
            found = f"{arr.min()}..{arr.max()}" if numeric else f"{arr.dtype} values"
            raise BadRecord(f"{origin}: raw pixels must be whole numbers in 0..255 (found {found})")
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
