"""Operator feedback: a judged part's original image plus who/when/why, in a folder training reads.

Layout under ``ui.feedback_path`` (MVTec AD's, so the folder is also an evaluation set)::

    test/good/<utc>_<frame>_c<card>.png    "good — false alarm" (or a confirmed good part)
    test/good/<utc>_<frame>_c<card>.json   who, when, why, verdict, score, threshold, seq, model
    test/defect/...                        "defect — missed"

``edge-inspector train --extra-good FEEDBACK_DIR`` adds ``test/good`` to the good training images;
``edge-inspector evaluate --data FEEDBACK_DIR`` reports how a model scores the judged parts.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from edge_inspector.archive.store import atomic_write, safe_name
from edge_inspector.errors import InputError

SCHEMA = "edge-inspector.feedback/1"
# label -> MVTec type folder
LABELS = {"good": "good", "defect": "defect"}
MAX_WHO = 64
MAX_WHY = 500


def parse_request(body: Any) -> dict:
    """Validate a feedback request body ``{"card": id, "label": "good"|"defect", "who": ..., "why": ...}``.

    InputError (one line, naming the field) on anything else."""
    if not isinstance(body, dict):
        raise InputError("feedback: the body must be a JSON object")
    unknown = sorted(set(body) - {"card", "label", "who", "why"})
    if unknown:
        raise InputError(f"feedback: unknown field(s) {', '.join(unknown)}")
    card = body.get("card")
    if isinstance(card, bool) or not isinstance(card, int) or card < 1:
        raise InputError(f"feedback: field 'card' must be a positive integer, not {card!r}")
    label = body.get("label")
    if label not in LABELS:
        raise InputError(f"feedback: field 'label' must be one of {', '.join(LABELS)}, not {label!r}")
    who = body.get("who")
    if not isinstance(who, str) or not who.strip() or len(who) > MAX_WHO:
        raise InputError(f"feedback: field 'who' must be a name of 1..{MAX_WHO} characters")
    why = body.get("why", "")
    if not isinstance(why, str) or len(why) > MAX_WHY:
        raise InputError(f"feedback: field 'why' must be text of at most {MAX_WHY} characters")
    return {"card": card, "label": label, "who": who.strip(), "why": why.strip()}


def write_feedback(root: Path, card: Any, request: Mapping[str, Any], station: str, now: float) -> Path:
    """Write the card's original image and its record; returns the image path. OSError passes up."""
    if not card.original_png:
        raise InputError(f"feedback: part {card.id} has no image to keep (its frame could not be read)")
    folder = Path(root) / "test" / LABELS[request["label"]]
    folder.mkdir(parents=True, exist_ok=True)
    when = datetime.fromtimestamp(now, tz=timezone.utc)
    stem = f"{when:%Y%m%dT%H%M%S}_{safe_name(card.frame_id)}_c{card.id}"
    image = folder / f"{stem}.png"
    record = {
        "schema": SCHEMA,
        "label": request["label"],
        "who": request["who"],
        "when": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "why": request["why"],
        "station": station,
        "verdict": card.verdict,
        "score": card.score,
        "threshold": card.threshold,
        "seq": card.seq,
        "frame_id": card.frame_id,
        "part_id": card.part_id,
        "product": card.product,
        "model": card.model,
        "image": image.name,
    }
    atomic_write(image, card.original_png)
    atomic_write(image.with_suffix(".json"), (json.dumps(record, indent=1) + "\n").encode())
    return image
