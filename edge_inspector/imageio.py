"""Reading images from disk with errors that name the file.

Files are identified by their content (magic bytes), never by their name: a valid JPEG saved as
``.png`` decodes. The header is read first (Pillow reads only the header on ``open``), so a
frame larger than the caller's pixel limit is refused before a single pixel is decoded; OpenCV
then decodes the pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from edge_inspector.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Formats we read (by content). Pillow only parses their headers here; OpenCV decodes.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")

# We apply our own pixel limit (max_pixels) from the header; Pillow's decompression-bomb warning
# for >89 MP headers would only repeat it on stderr.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageTooLargeError(DatasetError):
    """The header announces more pixels than the caller allows; nothing was decoded."""


@dataclass(frozen=True)
class ImageHeader:
    format: str  # one of IMAGE_FORMATS
    width: int
    height: int


def read_header(data: bytes | np.ndarray, where: str | Path) -> ImageHeader:
    """Format and size from the header alone. Raises DatasetError naming ``where``."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    try:
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as im:
            return ImageHeader(str(im.format), int(im.size[0]), int(im.size[1]))
    except Image.DecompressionBombError as exc:  # > 2×Pillow's own limit (~179 MP): far above any of ours
        raise ImageTooLargeError(f"{where}: frame is larger than any camera's ({exc.__class__.__name__}: "
                                 f"{str(exc).split(',')[0]}); not decoded") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{where}: not a readable image (not a valid {', '.join(IMAGE_FORMATS)} file: "
                           f"{str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})") from None


def read_image(path: str | Path, grayscale: bool = False, max_pixels: Optional[int] = None) -> np.ndarray:
    """Decode an image file (uint8, BGR or grey). Raises DatasetError naming the file;
    ImageTooLargeError, before decoding, when the header announces more than ``max_pixels``."""
    p = Path(path)
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{p}: image file not found") from None
    except OSError as exc:
        raise DatasetError(f"{p}: cannot read image ({exc})") from None
    if data.size == 0:
        raise DatasetError(f"{p}: image file is empty")
    header = read_header(data, p)
    if max_pixels is not None and header.width * header.height > max_pixels:
        raise ImageTooLargeError(f"{p}: {header.width}×{header.height} {header.format} frame is larger than the "
                                 f"{max_pixels / 1e6:g} MP limit; not decoded")
    flags = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_UNCHANGED
    img = cv2.imdecode(data, flags)
    if img is None:
        raise DatasetError(f"{p}: not a readable image (corrupt {header.format} data)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if not _fully_decoded(header.format, data):
        raise DatasetError(f"{p}: image file is truncated")
    return img


def _fully_decoded(image_format: str, data: np.ndarray) -> bool:
    """OpenCV decodes truncated PNG/JPEG files silently (grey padding); check the end markers."""
    if image_format == "PNG":
        return b"IEND" in data[-12:].tobytes()
    if image_format == "JPEG":
        return data[-2:].tobytes() == b"\xff\xd9" or b"\xff\xd9" in data[-64:].tobytes()
    return True


def list_images(folder: str | Path) -> list[Path]:
    p = Path(folder)
    return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else []
