"""The environment work-arounds of gstalker_ns._compat."""

from __future__ import annotations

import math

import pytest
import torch

from gstalker_ns import _compat


def test_lpips_never_downloads(monkeypatch, tmp_path):
    """splatfacto-style LPIPS construction works offline and reports NaN without weights."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache
    _compat.make_lpips_offline()
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    with pytest.warns(UserWarning, match="LPIPS unavailable"):
        metric = LearnedPerceptualImagePatchSimilarity(normalize=True)
    value = metric(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    assert math.isnan(float(value))


def test_splatfacto_builds_offline(monkeypatch, tmp_path):
    """nerfstudio's own splatfacto model constructs on CPU without touching the network."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    _compat.apply_all()
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.models.splatfacto import SplatfactoModelConfig

    config = SplatfactoModelConfig(random_init=True, num_random=50)
    with pytest.warns(UserWarning, match="LPIPS unavailable"):
        model = config.setup(scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1, metadata={})
    assert math.isnan(float(model.lpips(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))))


def test_torchvision_imports_next_to_cpu_torch():
    _compat.ensure_torchvision_importable()
    import torchvision.utils  # noqa: F401  (nerfstudio's import)

    _compat.ensure_torchvision_importable()  # idempotent
