"""config/station.example.yaml and docs/configuration.md cannot go stale: every key of the
schema (config/models.py) must appear in both, each example key documented by a comment, and the
example must load."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel

from edge_inspector.config.loader import load_config
from edge_inspector.config.models import Config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "station.example.yaml"
DOC = REPO / "docs" / "configuration.md"


def _section_type(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def schema_keys(model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    """Dotted leaf keys of the schema (sections are recursed into)."""
    keys = set()
    for name, field in model.model_fields.items():
        sub = _section_type(field.annotation)
        if sub is not None:
            keys |= schema_keys(sub, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def yaml_keys(tree, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in tree.items():
        if isinstance(v, dict) and v:  # an empty mapping ({}: e.g. recipes.products) is a value
            keys |= yaml_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def test_example_loads():
    cfg = load_config(EXAMPLE)
    assert cfg.station.line and cfg.camera.type == "pylon"


def test_example_has_every_schema_key():
    tree = yaml.safe_load(EXAMPLE.read_text())
    missing = sorted(schema_keys() - yaml_keys(tree))
    assert not missing, f"config/station.example.yaml lacks keys: {missing}"


def test_every_example_key_is_commented():
    """Each leaf key line has a comment just above it (a group of related keys may share one
    comment: any comment within the lines above that belong to the same section counts)."""
    lines = EXAMPLE.read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([a-z_]+):\s*(\S.*)?$", line)
        if not m or not m.group(3) or m.group(3).startswith("#"):
            continue  # section header or not a key
        indent = len(m.group(1))
        j = i - 1
        documented = "#" in (m.group(3) or "")
        while j >= 0 and not documented:
            prev = lines[j]
            if prev.strip().startswith("#"):
                documented = True
                break
            pm = re.match(r"^(\s*)[a-z_]+:", prev)
            if not pm or len(pm.group(1)) != indent:
                break  # reached the section header or another level
            j -= 1
        if not documented:
            undocumented.append(m.group(2))
    assert not undocumented, f"keys without a comment in the example: {undocumented}"


def test_docs_mention_every_key():
    text = DOC.read_text()
    missing = sorted(k for k in schema_keys() if f"`{k}`" not in text)
    assert not missing, f"docs/configuration.md lacks keys: {missing}"


def test_example_defaults_note_matches_schema():
    """Keys the example leaves at their default really are the schema defaults (catches a doc
    comment that promises a default the code no longer has)."""
    cfg = load_config(EXAMPLE)
    default = Config.model_validate({"station": cfg.station.model_dump()})
    # values the example deliberately sets away from the default
    chosen = {
        "camera.type", "camera.trigger.mode", "camera.exposure_us", "camera.pixel_format",
        "model.path", "outbox.path", "archive.path", "ui.feedback_path",
    }
    diffs = []
    for key in schema_keys():
        if key in chosen:
            continue
        a, b = cfg, default
        for part in key.split("."):
            a, b = getattr(a, part), getattr(b, part)
        if a != b:
            diffs.append(f"{key}: example {a!r} != default {b!r}")
    assert not diffs, "example value differs from the schema default without being listed as chosen: " + "; ".join(diffs)
