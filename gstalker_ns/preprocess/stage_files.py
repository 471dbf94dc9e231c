"""Housekeeping shared by the cached preprocessing stages."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Pattern


def remove_stale_files(
    items_dir: Path, stage_dir: Path, temp_re: Pattern[str], item_re: Pattern[str], keep_below: Optional[int]
) -> None:
    """Delete a stage's own leftovers, nothing else.

    Removes, in `items_dir` and `stage_dir`, files matching `temp_re` (temp files of interrupted
    atomic writes) and, when `keep_below` is given, numbered items in `items_dir` matching `item_re`
    (named `NNNNNN.ext`) whose number is `keep_below` or more (left by a longer earlier run).
    """
    for folder in (items_dir, stage_dir):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            stale_temp = temp_re.match(name) is not None
            stale_item = (
                keep_below is not None
                and Path(folder) == Path(items_dir)
                and item_re.match(name) is not None
                and int(name[:6]) >= keep_below
            )
            if (stale_temp or stale_item) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass


NUMBERED_PNG_RE = re.compile(r"^\d{6}\.png$")
