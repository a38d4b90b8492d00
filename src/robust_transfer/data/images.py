"""The one guarded path through which image files are decoded (``folder:`` datasets).

PIL decodes whatever it is given; this module refuses what would crash or silently
corrupt a dataset, naming the file: unreadable or truncated files, images over
:data:`MAX_PIXELS` (a decompression bomb, or a scan far larger than any target needs),
and images with more than 16 bits per channel (32-bit integer and float images have no
agreed range). 16-bit images are scaled to 8 bits (``round(v * 255 / 65535)``), where
PIL's own ``convert("L")`` clips every value above 255, i.e. almost every pixel.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from robust_transfer.errors import DatasetError

MAX_PIXELS = 8192 * 8192  # 67 M pixels: a 200-megapixel bomb is refused before decoding
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_GRAY = frozenset({"1", "L", "LA", *_SIXTEEN_BIT})
_EIGHT_BIT = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr",
                        "LAB", "HSV", "La", "RGBa"})
# what decoders raise on damaged files, besides OSError (PIL's truncated-file error)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has an image extension that ``folder:`` datasets read."""
    return path.suffix.lower() in IMAGE_EXTS


def image_channels(path: Path) -> int:
    """1 for a grayscale image file, else 3 (read from the header, nothing decoded).

    Raises:
        DatasetError: the file is not a readable image, too large or too deep.
    """
    with _opened(path) as im:
        return 1 if im.mode in _GRAY else 3


def read_image(path: Path, channels: int, size: int) -> np.ndarray:
    """Decode ``path`` as a uint8 ``[channels, size, size]`` array (bilinear resize).

    Args:
        path: an image file.
        channels: 1 (grayscale) or 3 (RGB).
        size: the square side to resize to.

    Raises:
        DatasetError: one line naming the file: unreadable, truncated, over
            :data:`MAX_PIXELS`, or more than 16 bits per channel.
    """
    from PIL import Image

    im = open_image(path, "L" if channels == 1 else "RGB")
    arr = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def open_image(path: str | Path, mode: str = "RGB"):
    """Decode ``path`` whole as a PIL image of ``mode`` (``"L"`` or ``"RGB"``); the loader
    of streamed folders (``torchvision.datasets.ImageFolder(loader=...)``) too.

    Raises:
        DatasetError: as :func:`read_image`.
    """
    from PIL import Image

    path = Path(path)
    with _opened(path) as im:
        try:
            im.load()
            if im.mode in _SIXTEEN_BIT:  # scale, do not clip, to 8 bits
                im = Image.fromarray(_sixteen_to_eight(np.asarray(im)), mode="L")
            return im.convert(mode)
        except _DECODE_ERRORS as err:
            raise DatasetError(f"{path} cannot be decoded ({_reason(err)}): it is truncated or "
                               "damaged; remove or replace it") from None


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


class _opened:
    """``with _opened(path) as im``: PIL's lazy open, with every refusal of this module."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                self.image = Image.open(self.path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_large(self.path, None) from None
        except _DECODE_ERRORS as err:  # PIL's UnidentifiedImageError is an OSError
            raise DatasetError(f"{self.path} is not a readable image ({_reason(err)}); "
                               "remove or replace it") from None
        try:
            _check_header(self.path, self.image)
        except BaseException:
            self.image.close()
            raise
        return self.image

    def __exit__(self, *exc: object) -> None:
        self.image.close()


def _check_header(path: Path, im) -> None:
    width, height = im.size
    if width * height > MAX_PIXELS:
        raise _too_large(path, (width, height))
    if im.mode not in _EIGHT_BIT | _SIXTEEN_BIT:
        bits = {"I": "32-bit integer", "F": "32-bit float"}.get(im.mode, f"mode {im.mode}")
        raise DatasetError(f"{path} has {bits} pixels (PIL mode {im.mode}), more than 16 bits "
                           "per channel with no agreed range; save it as 8- or 16-bit PNG")


def _too_large(path: Path, dims: tuple[int, int] | None) -> DatasetError:
    what = f"{dims[0]}x{dims[1]} pixels" if dims else "too many pixels (a decompression bomb?)"
    return DatasetError(f"{path} is {what}, above the limit of {MAX_PIXELS:,} pixels; "
                        "downscale it")


def _reason(err: BaseException) -> str:
    return " ".join(str(err).split())[:120] or type(err).__name__
