"""Where benchmarks put their raw numbers: one JSON file under benchmarks/results/."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(path: Path, payload: dict, tag: str) -> None:
    """Write `payload` as indented JSON (parents created) and say where, prefixed by `[tag]`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"[{tag}] wrote {path}")
