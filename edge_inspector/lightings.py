"""The names of the lighting normalisations (preprocess/core.py), in one place.

Imported by the CLI's parser, the config schema, training's settings check and the benchmarks,
so a new normalisation is named once. No dependencies: ``edge-inspector --help`` stays light.
"""

from __future__ import annotations

# Every normalisation a station can run (config ``preprocess.lighting``).
LIGHTINGS = ("none", "clahe", "flat_field", "match_train", "match_hist", "match_tone")
# Those a model can be trained with: flat_field needs the station's own reference image, so a
# station adds it over a bundle trained with none.
TRAIN_LIGHTINGS = tuple(name for name in LIGHTINGS if name != "flat_field")
# What `train` uses unless told otherwise (CLI and TrainSettings both read it): undoes global
# light changes and new ramps, leaves a frame lit like the training frames as it is
# (training/settings.py says why; docs/benchmarks.md, "Light stress").
DEFAULT_TRAIN_LIGHTING = "match_hist"
