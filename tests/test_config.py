import subprocess
import sys

import pytest

from edge_inspector.config import load_config
from edge_inspector.errors import ConfigError


STATION = "station:\n  line: l1\n  name: st1\n"


def write(tmp_path, text):
    p = tmp_path / "station.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides():
    cfg = load_config(None, ["camera.fps=7", "station.line=line1", "station.name=st3", "mqtt.port=1999"])
    assert cfg.camera.fps == 7
    assert cfg.mqtt.port == 1999
    assert cfg.topic_base == "edge-inspector/line1/st3"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("station:\n  line: l2\n  name: s\n  bogus: 1\n", ":4: station.bogus: unknown key"),
        ("camera:\n  fps: -1\n", ":5: camera.fps: Input should be greater than 0"),
        ("camera:\n  type: gige\n", ":5: camera.type:"),
        ("mqtt:\n  port: abc\n", ":5: mqtt.port:"),
        ("station: [1, 2\n", "invalid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("preprocess:\n  lighting: flat_field\n", "flat_field_reference"),
    ],
)
def test_invalid_configs_name_key_and_line(tmp_path, text, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text if text.startswith(("station", "- ")) else STATION + text))
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_relative_paths_resolve_against_config_folder(tmp_path):
    cfg = load_config(write(tmp_path, STATION + "model:\n  path: models/m1\ncamera:\n  type: opencv\n  path: '0'\n"))
    assert cfg.model.path == tmp_path / "models" / "m1"
    assert cfg.camera.path == "0"


def test_bad_override_is_config_error():
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["station.line=l", "station.name=s", "camera.nope=1"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(None, ["camera.fps"])


def test_bad_override_value_names_the_set_not_a_file_line(tmp_path):
    path = write(tmp_path, "station:\n  line: l2\n  name: s\ncamera:\n  fps: 5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, ["camera.fps=-1"])
    assert str(exc.value).startswith("--set camera.fps=-1: camera.fps: Input should be greater than 0")
    with pytest.raises(ConfigError) as exc:  # an error in the file itself still points at its line
        load_config(write(tmp_path, STATION + "camera:\n  fps: 0\n"), ["station.name=st3"])
    assert ":5: camera.fps:" in str(exc.value)


def test_check_config_cli_exit_codes(tmp_path):
    bad = write(tmp_path, STATION + "camera:\n  fps: 0\n")
    r = subprocess.run([sys.executable, "-m", "edge_inspector", "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "camera.fps" in r.stderr and "Traceback" not in r.stderr
    good = tmp_path / "good.yaml"
    good.write_text("station:\n  line: l2\n  name: st3\n")
    r = subprocess.run([sys.executable, "-m", "edge_inspector", "check-config", str(good), "--quiet", "--schema-only"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # Without --schema-only it checks what `run` needs too: here, a model (tests/test_preflight.py).
    r = subprocess.run([sys.executable, "-m", "edge_inspector", "check-config", str(good), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2 and "model.path: " in r.stderr and "model directory not found" in r.stderr, r.stderr
    missing = subprocess.run([sys.executable, "-m", "edge_inspector", "check-config", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr
