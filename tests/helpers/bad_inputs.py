"""Helpers for the bad-input fault tests (tests/faults/test_inputs_*): walk a pydantic model's numeric fields,
the bad values each must refuse, and odd frame files a camera folder can hold."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import annotated_types
import cv2
import numpy as np
from pydantic import BaseModel


@dataclass(frozen=True)
class NumericField:
    """One numeric leaf of a pydantic model: its dotted key, base type and declared bounds."""

    key: str
    kind: type  # int or float
    optional: bool
    default: Any
    lower: Optional[float] = None
    lower_inclusive: bool = True
    upper: Optional[float] = None
    upper_inclusive: bool = True

    def out_of_range(self) -> list[Any]:
        """A value just below the lower bound and just above the upper one (both must be refused)."""
        values = []
        if self.lower is not None:
            values.append(self.lower - 1 if self.lower_inclusive else self.lower)
        if self.upper is not None:
            values.append(self.upper + 1 if self.upper_inclusive else self.upper)
        return [int(v) if self.kind is int and float(v).is_integer() else v for v in values]

    def range_text(self) -> str:
        """How docs/configuration.md ("Number ranges") writes this key's range."""
        def num(v):
            return f"{v:,}".replace(",", " ") if isinstance(v, int) or float(v).is_integer() else f"{v:g}"
        low = "" if self.lower is None else f"{num(self.lower)} {'≤' if self.lower_inclusive else '<'} "
        high = "" if self.upper is None else f" {'≤' if self.upper_inclusive else '<'} {num(self.upper)}"
        kind = "integer" if self.kind is int else "number"
        return f"{kind} {low}x{high}" + (", or null" if self.optional else "")

    def in_range(self) -> Any:
        """The smallest value the bounds allow (must be accepted: a range that refuses everything
        would make every refusal above meaningless)."""
        if self.lower is None:
            return self.kind(0)
        if self.lower_inclusive:
            return self.kind(self.lower)
        return self.lower + 1 if self.kind is int else self.lower + 1e-3


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _base_type(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def numeric_fields(model: type[BaseModel], prefix: str = "") -> list[NumericField]:
    """Every int/float field of ``model`` and its nested sections (bool is not a number)."""
    found: list[NumericField] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation, optional = _unwrap_optional(info.annotation)
        base = _base_type(annotation)
        if isinstance(base, type) and issubclass(base, BaseModel):
            found.extend(numeric_fields(base, key + "."))
            continue
        if base not in (int, float):
            continue
        field = NumericField(key=key, kind=base, optional=optional, default=info.default)
        bounds: dict[str, Any] = {}
        for meta in info.metadata:
            if isinstance(meta, annotated_types.Gt):
                bounds.update(lower=meta.gt, lower_inclusive=False)
            elif isinstance(meta, annotated_types.Ge):
                bounds.update(lower=meta.ge, lower_inclusive=True)
            elif isinstance(meta, annotated_types.Lt):
                bounds.update(upper=meta.lt, upper_inclusive=False)
            elif isinstance(meta, annotated_types.Le):
                bounds.update(upper=meta.le, upper_inclusive=True)
        found.append(NumericField(**{**field.__dict__, **bounds}))
    return found


# Values no numeric key may take, whatever its range (YAML spelling, as --set parses it).
NON_NUMBERS_YAML = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf", "true": "true"}
NON_NUMBERS_JSON = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity", "true": "true"}


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- odd frames ----------------------------------------------------------------------------------
def write_png(path: Path, image: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def write_huge_png_header(path: Path, width: int, height: int) -> Path:
    """A real, complete PNG of ``width``×``height`` grey pixels, written with cv2 row-compressed:
    small on disk (zeros compress ~1000:1) but ``width*height`` bytes once decoded."""
    image = np.zeros((height, width), np.uint8)
    return write_png(path, image)


def odd_frames(folder: Path, good: np.ndarray) -> dict[str, Path]:
    """Files a station's folder camera must turn into one ERROR each, keyed by kind; the part
    name's last ``_`` field is the kind (``odd_<kind>.png``)."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = {
        "tiny": write_png(folder / "odd_tiny.png", np.full((1, 1), 127, np.uint8)),
        "sliver": write_png(folder / "odd_sliver.png", np.full((1, 5000), 127, np.uint8)),
        "huge": write_huge_png_header(folder / "odd_huge.png", 8000, 8000),
        "alpha": write_png(folder / "odd_alpha.png", np.full((96, 128, 4), 127, np.uint8)),
    }
    return frames


def make_nan_bundle(model_dir: Path, image_size: int = 64, threshold: float = 0.5) -> Path:
    """A valid bundle whose model outputs NaN for every pixel and every score: sqrt(-1 - |x|)."""
    import hashlib
    import json

    import onnx
    from onnx import TensorProto, helper

    from tests.helpers.tiny_bundle import OPSET, make_tiny_bundle

    d = make_tiny_bundle(model_dir, image_size=image_size, threshold=threshold)
    s = int(image_size)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, s, s])
    amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, s, s])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Abs", ["image"], ["abs_image"]),
        helper.make_node("ReduceMean", ["abs_image"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Add", ["mean", "one"], ["shifted"]),
        helper.make_node("Neg", ["shifted"], ["negative"]),
        helper.make_node("Sqrt", ["negative"], ["anomaly_map"]),  # sqrt of a negative number: NaN
        helper.make_node("ReduceMax", ["negative"], ["max_negative"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sqrt", ["max_negative"], ["score"]),
    ]
    graph = helper.make_graph(nodes, "nan_anomaly", [image], [amap, score], initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    (d / "model.onnx").write_bytes(data)
    meta = json.loads((d / "model.json").read_text())
    meta["onnx_sha256"] = hashlib.sha256(data).hexdigest()
    meta["name"] = "nan-model"
    (d / "model.json").write_text(json.dumps(meta, indent=2))
    return d
