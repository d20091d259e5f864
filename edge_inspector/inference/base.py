"""Engine interface: preprocessed batch in, anomaly maps and image scores out."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


@dataclass
class InferenceResult:
    anomaly_map: np.ndarray  # H×W float32 at model input size, same units as score
    score: float


class Engine(abc.ABC):
    provider: str = "cpu"

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """batch N×3×H×W float32 → (maps N×H×W float32, scores N float32); H×W = bundle.input_shape."""

    def infer_one(self, tensor: np.ndarray) -> InferenceResult:
        maps, scores = self.infer(tensor[None])
        return InferenceResult(maps[0], float(scores[0]))

    def warm_up(self, runs: int = 3) -> None:
        ...

    def close(self) -> None:
        ...
