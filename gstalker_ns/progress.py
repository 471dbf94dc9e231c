"""One progress-bar helper for every long stage (tqdm when shown, a silent stand-in otherwise)."""

from __future__ import annotations

from typing import Any, Optional


class _SilentBar:
    """Same calls as a tqdm bar, does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_SilentBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: Optional[int], desc: str, enabled: bool, unit: str = "frame") -> Any:
    """A tqdm bar (usable as a context manager) when enabled and tqdm is installed, else a silent one."""
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        except ImportError:
            pass
    return _SilentBar()
