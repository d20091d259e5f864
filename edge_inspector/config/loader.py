"""Load a station YAML file, apply `--set key.path=value` overrides, validate.

Errors name the file, the dotted key path and (when the key came from the file) its line:
``station.yaml:12: camera.fps: Input should be greater than 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from edge_inspector.config.models import Config
from edge_inspector.config.numbers import error_text
from edge_inspector.errors import ConfigError
from edge_inspector.instance import apply_instance_defaults

# Input files whose relative paths are resolved against the config file's folder, so that a
# station config works the same whatever the daemon's working directory is. State paths (outbox,
# archive) follow instance.py's rule instead: the unit's state directory when systemd runs it.
_PATH_KEYS = (
    ("camera", "path"),
    ("model", "path"),
    ("preprocess", "flat_field_reference"),
    ("mqtt", "password_file"),
    ("health", "token_file"),
    ("ui", "feedback_path"),
    ("mqtt", "tls", "ca_file"),
    ("mqtt", "tls", "cert_file"),
    ("mqtt", "tls", "key_file"),
)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key, and every key given twice."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False):
    mapping = {}
    lines = {}
    duplicates = []  # (key, line, first line): PyYAML would silently keep the last value
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in lines:
            duplicates.append((key, line, lines[key]))
        mapping[key] = loader.construct_object(value_node, deep=deep)
        lines.setdefault(key, line)
    return _Mapping(mapping, lines, duplicates)


class _Mapping(dict):
    def __init__(self, data, lines, duplicates=()):
        super().__init__(data)
        self.lines = lines
        self.duplicates = list(duplicates)


def _first_duplicate(tree: Any, path: tuple = ()) -> tuple[int, str, int] | None:
    """(line, dotted key, first line) of the earliest key given twice in the same section."""
    found = []
    if isinstance(tree, _Mapping):
        found += [(line, ".".join(map(str, path + (key,))), first) for key, line, first in tree.duplicates]
        for key, value in tree.items():
            hit = _first_duplicate(value, path + (key,))
            if hit:
                found.append(hit)
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            hit = _first_duplicate(value, path + (index,))
            if hit:
                found.append(hit)
    return min(found) if found else None


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _line_of(tree: Any, loc: Iterable[Any]) -> int | None:
    line = None
    node = tree
    for part in loc:
        if isinstance(node, _Mapping) and part in node:
            line = node.lines.get(part, line)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            break
    return line


def parse_override(text: str) -> tuple[list[str], Any]:
    """``camera.fps=5`` → (["camera", "fps"], 5). The value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected key.path=value")
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text}: empty key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = {}
                node[part] = nxt
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text}: '{part}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def _resolve_paths(data: dict, base: Path) -> None:
    for keys in _PATH_KEYS:
        node = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
            if node is None:
                break
        if not isinstance(node, dict):
            continue
        value = node.get(keys[-1])
        if isinstance(value, str) and value and not _looks_like_device(keys, value):
            node[keys[-1]] = _against(base, value)
    products = (data.get("recipes") or {}).get("products") if isinstance(data.get("recipes"), dict) else None
    for product in (products or {}).values() if isinstance(products, dict) else ():
        if isinstance(product, dict) and isinstance(product.get("model_path"), str) and product["model_path"]:
            product["model_path"] = _against(base, product["model_path"])


def _against(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return value if p.is_absolute() else str(base / p)


def _looks_like_device(keys: tuple, value: str) -> bool:
    # camera.path for opencv can be a device index or URL; do not turn those into paths.
    return keys == ("camera", "path") and (value.isdigit() or "://" in value)


def _override_for(loc: list, overrides: Iterable[str]) -> str | None:
    """The last ``--set`` whose key path is, or contains, the failing key (its value won)."""
    found = None
    for text in overrides:
        try:
            parts, _ = parse_override(text)
        except ConfigError:
            continue
        n = min(len(parts), len(loc))
        if n and [str(p) for p in loc[:n]] == parts[:n]:
            found = text
    return found


def _format_validation_error(exc: ValidationError, source: str, tree: Any, overrides: Iterable[str] = ()) -> str:
    err = exc.errors()[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after"))]
    key = ".".join(str(p) for p in loc) or "(top level)"
    msg = error_text(err)
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    override = _override_for(loc, overrides) if loc else None
    if override is not None:
        # The value came from the command line: pointing at a line of the file would mislead.
        where = f"--set {override}"
    else:
        line = _line_of(tree, loc)
        where = f"{source}:{line}" if line else source
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{where}: {key}: {msg}{suffix}"


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Load and validate a station config; raise ConfigError with a one-line message."""
    tree: Any = {}
    source = "<defaults>"
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        source = str(p)
        base = p.resolve().parent
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{source}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read config file ({exc.__class__.__name__}: {exc})") from None
        try:
            tree = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{where}: invalid YAML: {problem}") from None
        if tree is None:
            # An empty file would run a station on defaults with nobody's name on it.
            raise ConfigError(f"{source}: the file is empty; a station config needs at least station.line and station.name")
        if not isinstance(tree, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections (station:, camera:, ...)")
        duplicate = _first_duplicate(tree)
        if duplicate is not None:
            line, key, first = duplicate
            raise ConfigError(f"{source}:{line}: {key}: duplicate key (first at line {first}); "
                              "YAML would silently keep only the last one")
    data = _plain(tree)
    overrides = list(overrides)
    apply_overrides(data, overrides)
    _resolve_paths(data, base)
    apply_instance_defaults(data, base)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source, tree, overrides)) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
