"""Class 1 of issue 8 for the station config: no non-finite or out-of-range number, no silently
overridden key and no anonymous station gets past ``load_config`` — the one door that
check-config, run, ``--set`` and SIGHUP reload all go through.

The numeric tests walk the pydantic schema, so a key added without a range fails here."""

from __future__ import annotations

import pytest

from edge_inspector.config import load_config
from edge_inspector.config.models import Config
from edge_inspector.errors import ConfigError
from tests.helpers.bad_inputs import NON_NUMBERS_YAML, numeric_fields
from tests.helpers.station import REPO, run_cli

NUMERIC = numeric_fields(Config)
MINIMAL = "station:\n  line: l1\n  name: st1\n"


@pytest.fixture
def station_file(tmp_path):
    path = tmp_path / "station.yaml"
    path.write_text(MINIMAL)
    return path


def test_the_walk_finds_the_numeric_keys():
    keys = {f.key for f in NUMERIC}
    # a sanity anchor: if the walker silently found nothing, every parametrized test would vanish
    assert {"camera.fps", "model.threshold", "mqtt.port", "outbox.max_mb", "postprocess.map_threshold"} <= keys
    assert len(keys) >= 30


@pytest.mark.parametrize("field", NUMERIC, ids=lambda f: f.key)
def test_every_numeric_key_has_a_lower_and_an_upper_bound(field):
    assert field.lower is not None and field.upper is not None, f"{field.key}: declare a range (Field(ge/gt=..., le/lt=...))"


@pytest.mark.parametrize("field", NUMERIC, ids=lambda f: f.key)
def test_every_numeric_default_and_lowest_value_are_accepted(station_file, field):
    if field.default is not None:
        load_config(station_file, [f"{field.key}={field.default}"])
    load_config(station_file, [f"{field.key}={field.in_range()}"])


@pytest.mark.parametrize("bad", sorted(NON_NUMBERS_YAML))
@pytest.mark.parametrize("field", NUMERIC, ids=lambda f: f.key)
def test_every_numeric_key_refuses_non_finite_and_booleans(station_file, field, bad):
    override = f"{field.key}={NON_NUMBERS_YAML[bad]}"
    with pytest.raises(ConfigError) as exc:
        load_config(station_file, [override])
    message = str(exc.value)
    assert message.startswith(f"--set {override}: {field.key}: ") and "\n" not in message


@pytest.mark.parametrize("field", NUMERIC, ids=lambda f: f.key)
def test_every_numeric_key_refuses_values_outside_its_range(tmp_path, field):
    for value in field.out_of_range():
        # in the file this time: the error names the file's line
        path = tmp_path / "station.yaml"
        section, *rest = field.key.split(".")
        text = MINIMAL if section != "station" else ""
        nested = f"{section}:\n"
        indent = "  "
        for part in rest[:-1]:
            nested += f"{indent}{part}:\n"
            indent += "  "
        nested += f"{indent}{rest[-1]}: {value}\n"
        path.write_text(text + nested)
        with pytest.raises(ConfigError) as exc:
            load_config(path)
        assert f"station.yaml:{nested.count(chr(10)) + text.count(chr(10))}: {field.key}: " in str(exc.value), str(exc.value)


def test_the_docs_state_every_numeric_range():
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = text.split("## Number ranges", 1)[1].split("\n## ", 1)[0]
    missing = [f"| `{f.key}` | {f.range_text()} |" for f in NUMERIC if f"| `{f.key}` | {f.range_text()} |" not in section]
    assert not missing, "docs/configuration.md, Number ranges: rows missing or out of date: " + "; ".join(missing)


@pytest.mark.parametrize("roi", ["[0, 0, 0, 10]", "[-1, 0, 10, 10]", "[0, .nan, 10, 10]", "[0, 0, 10, .inf]",
                                 "[true, 0, 10, 10]", "[0, 0, 10, 100000000]"])
def test_roi_elements_are_bounded_numbers(station_file, roi):
    with pytest.raises(ConfigError, match="preprocess.roi"):
        load_config(station_file, [f"preprocess.roi={roi}"])


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "0", "-1", "true"])
def test_check_config_refuses_a_threshold_that_cannot_decide(station_file, value):
    r = run_cli("check-config", str(station_file), "--quiet", "--set", f"model.threshold={value}")
    assert r.returncode == 2, r.stdout + r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"--set model.threshold={value}: model.threshold:" in line


def test_threshold_in_the_file_names_its_line(tmp_path):
    path = tmp_path / "station.yaml"
    path.write_text(MINIMAL + "model:\n  threshold: .nan\n")
    with pytest.raises(ConfigError, match=r"station.yaml:5: model.threshold: Input should be a finite number"):
        load_config(path)


# --- keys that are there twice, or not at all ----------------------------------------------------
@pytest.mark.parametrize(
    "text, needle",
    [
        (MINIMAL + "camera:\n  fps: 5\n  fps: 50\n", "station.yaml:6: camera.fps: duplicate key (first at line 5)"),
        (MINIMAL + "camera:\n  fps: 5\ncamera:\n  loop: true\n", "station.yaml:6: camera: duplicate key (first at line 4)"),
        ("station:\n  line: l1\n  name: a\n  name: b\n", "station.yaml:4: station.name: duplicate key (first at line 3)"),
        (MINIMAL + "mqtt:\n  tls:\n    enabled: true\n    enabled: false\n",
         "station.yaml:7: mqtt.tls.enabled: duplicate key (first at line 6)"),
    ],
)
def test_duplicate_keys_are_errors_naming_both_lines(tmp_path, text, needle):
    path = tmp_path / "station.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "station.yaml: the file is empty"),
        ("# only a comment\n", "station.yaml: the file is empty"),
        ("camera:\n  fps: 5\n", "station.yaml: station: required key is missing"),
        ("station:\n  line: l1\n", "station.yaml:1: station.name: required key is missing"),
        ("station:\n  name: st1\n", "station.yaml:1: station.line: required key is missing"),
        ("station:\n", "station.yaml:1: station: "),
    ],
)
def test_a_station_must_name_itself(tmp_path, text, needle):
    path = tmp_path / "station.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert needle in str(exc.value), str(exc.value)


def test_missing_station_exits_2_from_the_cli(tmp_path):
    path = tmp_path / "station.yaml"
    path.write_text("camera:\n  fps: 5\n")
    r = run_cli("check-config", str(path), "--quiet")
    assert r.returncode == 2 and "station: required key is missing" in r.stderr and "Traceback" not in r.stderr


# --- outbox.path -----------------------------------------------------------------------------------
def test_outbox_path_naming_a_directory_exits_2_from_run(tmp_path):
    (tmp_path / "state").mkdir()
    path = tmp_path / "station.yaml"
    path.write_text(MINIMAL + f"outbox:\n  path: {tmp_path / 'state'}\n")
    for args in (("check-config", str(path), "--quiet"), ("run", "--config", str(path), "--max-frames", "1")):
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        line = r.stderr.strip()
        assert "\n" not in line and "outbox.path" in line and "directory" in line, line
