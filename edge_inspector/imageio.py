"""Reading images from disk with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_inspector.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_image(path: str | Path, grayscale: bool = False) -> np.ndarray:
    """Decode an image file (uint8, BGR or grey). Raises DatasetError naming the file."""
    p = Path(path)
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{p}: image file not found") from None
    except OSError as exc:
        raise DatasetError(f"{p}: cannot read image ({exc})") from None
    if data.size == 0:
        raise DatasetError(f"{p}: image file is empty")
    flags = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_UNCHANGED
    img = cv2.imdecode(data, flags)
    if img is None:
        raise DatasetError(f"{p}: not a readable image (corrupt or unsupported format)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if not _fully_decoded(p, data):
        raise DatasetError(f"{p}: image file is truncated")
    return img


def _fully_decoded(p: Path, data: np.ndarray) -> bool:
    """OpenCV decodes truncated PNG/JPEG files silently (grey padding); check the end markers."""
    suffix = p.suffix.lower()
    tail = data[-12:].tobytes()
    if suffix == ".png":
        return b"IEND" in tail
    if suffix in (".jpg", ".jpeg"):
        return data[-2:].tobytes() == b"\xff\xd9" or b"\xff\xd9" in data[-64:].tobytes()
    return True


def list_images(folder: str | Path) -> list[Path]:
    p = Path(folder)
    return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else []
