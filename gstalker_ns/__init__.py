"""gstalker-ns: audio-driven 3D Gaussian talking portraits (GSTalker) for nerfstudio.

Kept import-light on purpose: `gstalker_ns._startup` is imported from a `.pth` hook at every
interpreter start in the project's environment, so nothing here may import torch.
"""

__version__ = "0.1.0"
