"""What every benchmark does with its result: print the JSON document, and write it to ``--json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def emit(report: dict, json_out: Optional[str | Path]) -> None:
    text = json.dumps(report, indent=1)
    print(text)
    if json_out:
        Path(json_out).write_text(text + "\n", encoding="utf-8")
