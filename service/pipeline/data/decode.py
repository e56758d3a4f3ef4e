"""Opening and decoding one image under the limits: the format allowlist and the pixel cap.

Used by the listers (a header-only check of every file) and by :meth:`Dataset.open_image`
(service/pipeline/data/datasets.py: the full decode); separate from both because it is the one place that
calls Pillow. Corrupt image *data* shows only when decoding, so decoding raises :class:`ImageDecodeError`
and feature extraction skips and counts such images.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
import warnings
from typing import IO

from PIL import Image, ImageFile

__all__ = [
    "ALLOWED_FORMATS",
    "ImageDecodeError",
    "check_stat",
    "decode_image",
    "probe_image",
    "warn_if_truncated_images_allowed",
]

_logger = logging.getLogger(__name__)

#: PIL format names we decode. Pillow sniffs by content, so this allowlist (passed as ``formats=``)
#: is what keeps EPS (Ghostscript), PDF, FITS & co. away from the decoders.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")

#: Everything Pillow's decoders are known to raise on hostile or broken data.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    ZeroDivisionError,
    MemoryError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


class ImageDecodeError(Exception):
    """An image could not be (safely) opened or decoded.

    Not a user-facing :class:`~service.errors.BackboneRankError`: feature extraction skips and counts
    such images. ``reason`` uses the same vocabulary as :attr:`Dataset.skipped`.
    """

    def __init__(self, message: str, *, reason: str = "corrupt_image", source: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.source = source


_truncated_warning_given = False


def warn_if_truncated_images_allowed() -> None:
    """Someone switched ``LOAD_TRUNCATED_IMAGES`` on, so truncated files would decode silently padded
    instead of raising. We never set it, and do not reset a global someone else set: say so, once."""
    global _truncated_warning_given
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _truncated_warning_given:
        _truncated_warning_given = True
        _logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images are not detected")


def check_stat(st: os.stat_result, max_bytes: int, source: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ImageDecodeError("not a regular file", reason="not_regular_file", source=source)
    if st.st_size > max_bytes:
        raise ImageDecodeError(f"{st.st_size} bytes > {max_bytes}", reason="too_large_file", source=source)


def _open_header(fh: IO[bytes], source: str, max_pixels: int) -> Image.Image:
    """``Image.open`` restricted to the allowlist, pixel cap checked from the header (nothing decoded).

    While listing it runs inside ``warnings.catch_warnings()`` with DecompressionBombWarning as an
    error; when decoding, the cap is clamped to Pillow's bomb threshold instead (thread-safe).
    """
    try:
        im = Image.open(fh, formats=ALLOWED_FORMATS)
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(
            "not an image in an allowed format", reason="unsupported_format", source=source
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError("decompression bomb", reason="too_many_pixels", source=source) from None
    except _DECODE_ERRORS as err:
        raise ImageDecodeError(f"unreadable image header: {err}", reason="corrupt_image", source=source) from None
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise ImageDecodeError(f"{width}x{height} pixels > {max_pixels}", reason="too_many_pixels", source=source)
    if width <= 0 or height <= 0:
        im.close()
        raise ImageDecodeError(f"empty image {width}x{height}", reason="corrupt_image", source=source)
    return im


def probe_image(fh: IO[bytes], source: str, max_pixels: int) -> None:
    """Header-only check used while listing."""
    with warnings.catch_warnings():
        # Local, not process-wide: Pillow's MAX_IMAGE_PIXELS only warns below 2x the cap.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        _open_header(fh, source, max_pixels).close()


def decode_image(fh: IO[bytes], source: str, max_pixels: int) -> Image.Image:
    """Fully decode (first frame) and convert to RGB; any decoder failure is an ImageDecodeError.

    No ``warnings.catch_warnings()`` here: it is not thread-safe and extraction decodes in a
    background thread. Listing already skipped files above Pillow's bomb threshold (the cap is
    clamped to it), and the header check below refuses a file that grew since.
    """
    im = _open_header(fh, source, min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels))
    try:
        with im:
            im.load()
            if im.mode == "P" and "transparency" in im.info:
                # Straight P -> RGB warns about byte transparency; going through RGBA is equivalent.
                return im.convert("RGBA").convert("RGB")
            return im.convert("RGB")
    except _DECODE_ERRORS as err:
        raise ImageDecodeError(f"cannot decode: {err}", reason="corrupt_image", source=source) from err
