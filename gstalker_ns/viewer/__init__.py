"""The audio panel of nerfstudio's web viewer (see `panel.AudioPanel` and docs/viewer.md)."""

from gstalker_ns.viewer.panel import AudioPanel

__all__ = ["AudioPanel"]
