"""Station configuration: pydantic models and YAML loading."""

from edge_inspector.config.loader import apply_overrides, dump_config, load_config, parse_override
from edge_inspector.config.models import Config

__all__ = ["Config", "load_config", "apply_overrides", "parse_override", "dump_config"]
