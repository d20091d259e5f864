"""Shared fixtures: dataset location, a real mosquitto broker, tmp station configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.broker import Mosquitto, mosquitto_binary
from tests.helpers.station import CONTRACT_VIOLATIONS

REPO = Path(__file__).resolve().parents[1]
# ../shared/datasets next to the checkout (CI lays shared/ beside the clone); overridable.
DATASETS = Path(os.environ.get("EDGE_INSPECTOR_DATASETS", REPO.parent / "shared" / "datasets"))


def dataset_dir(*parts: str) -> Path:
    path = DATASETS.joinpath(*parts)
    if not (path / "train" / "good").is_dir():
        pytest.skip(f"dataset not available at {path} (set EDGE_INSPECTOR_DATASETS or place ../shared/datasets)")
    return path


@pytest.fixture
def bottle_dir() -> Path:
    return dataset_dir("mvtec_ad", "bottle")


@pytest.fixture
def tire_dir() -> Path:
    return dataset_dir("mvtec_3d_ad", "tire")


@pytest.fixture
def mosquitto(tmp_path) -> Mosquitto:
    if not mosquitto_binary():
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()


@pytest.fixture(autouse=True)
def published_payloads_follow_the_contract():
    """Every station payload a test's Subscriber received validates against docs/schemas."""
    CONTRACT_VIOLATIONS.clear()
    yield
    violations, CONTRACT_VIOLATIONS[:] = list(CONTRACT_VIOLATIONS), []
    assert not violations, f"{len(violations)} payload(s) break docs/schemas: {violations[:5]}"
