"""Files that appear whole or not at all: write under a temporary name beside the target, then rename.

Every writer of ours (JSON, npy, wav, mp4) goes through `atomic_output`, so an interrupted run
never leaves a half-written file under the real name, and finished files get the mode of a
normally created file (mkstemp's temporary files are private, 0600). Standard library only.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union


def make_ordinary(path: Union[str, "os.PathLike[str]"]) -> None:
    """Give a temp file the mode of a normally created file (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextmanager
def atomic_output(path: Union[str, "os.PathLike[str]"], suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path in the target's folder; on success it becomes `path`, on any
    error (or interruption) it is removed. The folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=str(path.parent))
    os.close(fd)
    try:
        yield tmp
        make_ordinary(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
