"""MVTec-AD-style category folders: ``train/good``, ``test/<type>``, ``ground_truth/<type>/<stem>_mask.png``.

No torch here: evaluation runs through the ONNX runtime engine and must not need the training extra.
Unreadable images are skipped with a counted warning while others remain; none left is an error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from edge_inspector.errors import DatasetError
from edge_inspector.imageio import list_images, read_image
from edge_inspector.logging import get_logger

log = get_logger(__name__)


@dataclass
class TestItem:
    __test__ = False  # not a pytest class

    path: Path
    defect_type: str  # "good" or the defect folder name
    mask_path: Optional[Path]

    @property
    def label(self) -> int:
        return 0 if self.defect_type == "good" else 1


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} folder not found")
    return path


def train_good_paths(data_dir: str | Path) -> list[Path]:
    """Image files of ``DIR/train/good`` in name order; error if missing or empty."""
    root = Path(data_dir)
    _require_dir(root, "dataset")
    good = _require_dir(root / "train" / "good", "train/good")
    files = list_images(good)
    if not files:
        raise DatasetError(f"{good}: no images found (png, jpg, bmp, tif)")
    return files


def iter_images(paths: list[Path], what: str = "images", skipped: Optional[list] = None):
    """(path, image) for each readable file, skipping unreadable ones with a warning (appended to
    ``skipped``). One decoded image at a time: training streams a set that does not fit in RAM."""
    for p in paths:
        try:
            image = read_image(p)
        except DatasetError as exc:
            if skipped is not None:
                skipped.append(str(exc))
            log.warning("skipping unreadable image", error=str(exc))
            continue
        yield p, image


def load_images(paths: list[Path], what: str = "images") -> tuple[list[Path], list[np.ndarray]]:
    """Decode files, skipping unreadable ones with a warning; DatasetError when none remain."""
    kept_paths, images, skipped = [], [], []
    for p, image in iter_images(paths, what, skipped):
        kept_paths.append(p)
        images.append(image)
    check_readable(len(images), skipped, what)
    return kept_paths, images


def check_readable(n_kept: int, skipped: list, what: str) -> None:
    """The counted warning after a pass of :func:`iter_images`; DatasetError when none remain."""
    if skipped:
        log.warning(f"skipped {len(skipped)} unreadable {what}", skipped=len(skipped), kept=n_kept)
    if not n_kept:
        first = skipped[0] if skipped else "no files"
        raise DatasetError(f"no readable {what} remain ({len(skipped)} skipped; first: {first})")


def extra_good_paths(folder: str | Path) -> list[Path]:
    """``train --extra-good DIR``: the images in DIR, or in DIR/test/good for a feedback folder
    (the operator page's layout, which is also an MVTec test set)."""
    root = Path(folder)
    _require_dir(root, "--extra-good")
    files = list_images(root) or list_images(root / "test" / "good")
    if not files:
        raise DatasetError(f"{root}: --extra-good has no images (png, jpg, bmp, tif) in it or in its test/good")
    return files


def load_train_good(data_dir: str | Path) -> tuple[list[Path], list[np.ndarray]]:
    return load_images(train_good_paths(data_dir), "training images")


def fingerprint(paths: list[Path]) -> str:
    """Identity of a training set: sha256 over sorted (name, size) pairs; cheap and stable."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
    return h.hexdigest()


def list_test_items(data_dir: str | Path) -> list[TestItem]:
    """Every image under ``DIR/test/<type>``, with its mask path for defect types."""
    root = Path(data_dir)
    test_root = _require_dir(root / "test", "test")
    items: list[TestItem] = []
    for type_dir in sorted(d for d in test_root.iterdir() if d.is_dir()):
        for img in list_images(type_dir):
            mask = None
            if type_dir.name != "good":
                candidate = root / "ground_truth" / type_dir.name / f"{img.stem}_mask.png"
                mask = candidate if candidate.is_file() else None
            items.append(TestItem(img, type_dir.name, mask))
    if not items:
        raise DatasetError(f"{test_root}: no test images found")
    return items


def read_mask(item: TestItem, image_shape: tuple[int, ...]) -> np.ndarray:
    """Binary H×W mask (bool) for an item; zeros for good images or defects without a mask file.

    A mask whose size differs from its image is a dataset error (naming both files)."""
    h, w = image_shape[:2]
    if item.mask_path is None:
        return np.zeros((h, w), dtype=bool)
    mask = read_image(item.mask_path, grayscale=True)
    if mask.shape[:2] != (h, w):
        raise DatasetError(
            f"{item.mask_path}: mask size {mask.shape[1]}×{mask.shape[0]} differs from image {item.path} ({w}×{h})"
        )
    return mask > 127
