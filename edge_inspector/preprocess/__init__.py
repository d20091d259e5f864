"""Preprocessing shared by training and runtime: one implementation, so the model sees at run
time exactly what it saw in training.

``Preprocessor.prepare(image)`` takes a decoded uint8 frame (H×W grey or H×W×3 BGR as OpenCV
gives it) and returns a float32 CHW RGB tensor normalised for the backbone, plus the geometry
needed to map anomaly-map pixels back to original-image pixels.
"""

from edge_inspector.preprocess.core import Geometry, Preprocessor, aspect_input_shape, input_shape, normalise_tf, to_bgr_uint8
from edge_inspector.preprocess.photometric import random_photometric, strong_light

__all__ = ["Preprocessor", "Geometry", "aspect_input_shape", "input_shape", "normalise_tf", "to_bgr_uint8", "random_photometric", "strong_light"]
