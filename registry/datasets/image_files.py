"""Reading image files (TIFF, JPEG, PNG) into uint8 arrays, naming the file in every failure.

TIFFs go through tifffile with imagecodecs, which decode every compression an orthophoto is likely to carry (none,
LZW, Deflate, JPEG, ...) in strips or tiles; JPEG and PNG go through Pillow, which refuses truncated files rather than
filling them with grey. A file that cannot be read is a :class:`UserError` with its path: a user's corrupt download
must not end in a decoder's traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from registry.errors import UserError

READ_BUFFER_BYTES = 2**24


class _Collect(logging.Handler):
    """Collects the errors tifffile logs; its warnings (about GeoTIFF metadata, say) do not affect the pixels."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn any failure to decode ``path`` into a one-line UserError. tifffile reports some damage (strip offsets or
    counts that do not fit the image) as a logged error and carries on: those count as failures too."""
    collect = _Collect()
    logger = logging.getLogger("tifffile")
    logger.addHandler(collect)
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except Exception as err:  # noqa: BLE001  (decoders raise many types; the message is what matters)
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: cannot read this {what} (corrupt or truncated?): {detail}") from None
    finally:
        logger.removeHandler(collect)
    if collect.messages:
        raise UserError(f"{path}: cannot read this {what} (corrupt or truncated?): {collect.messages[0]}")


def _as_image(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """``[H, W, C]`` from a TIFF page's array and axes (``YXS`` interleaved or ``SYX`` planar)."""
    if axes == "SYX":
        array = np.moveaxis(array, 0, -1)
    elif axes == "YX":
        array = array[..., None]
    elif axes != "YXS":
        raise UserError(f"{path}: unexpected TIFF layout {axes!r} (expected a single image with samples per pixel)")
    return array


def tiff_size(path: Path, what: str = "TIFF") -> tuple[int, int]:
    """(height, width) of a TIFF's first image, from its header alone."""
    with _reading(path, what), tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        return int(page.imagelength), int(page.imagewidth)


def read_tiff(path: Path, what: str = "TIFF") -> np.ndarray:
    """A TIFF's first image as uint8 ``[H, W, C]``."""
    with _reading(path, what), tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        # Read the compressed data 16 MB at a time: by default tifffile reads it all at once, which doubles the peak
        # memory for a large orthophoto.
        array = _as_image(page.asarray(buffersize=READ_BUFFER_BYTES), page.axes, path)
    if array.dtype != np.uint8:
        raise UserError(f"{path}: {what} has {array.dtype} pixels; expected 8-bit (uint8)")
    return array


def read_picture(path: Path, what: str = "image") -> np.ndarray:
    """A JPEG or PNG as uint8 ``[H, W, C]`` (its own channels, no colour conversion)."""
    with _reading(path, what):
        try:
            with Image.open(path) as picture:
                picture.load()
                array = np.asarray(picture)
        except UnidentifiedImageError:
            raise UserError(f"{path}: not an image file Pillow can identify ({what})") from None
    if array.dtype != np.uint8:
        raise UserError(f"{path}: {what} has {array.dtype} pixels; expected 8-bit (uint8)")
    return array if array.ndim == 3 else array[..., None]
