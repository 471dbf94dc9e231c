#!/usr/bin/env bash
# Set up (or refresh) the project's environment in .venv. Idempotent: a second run only checks.
#
# - torch is pinned to the local CPU build (2.13.0) and everything else to scripts/constraints.txt,
#   so pip never pulls several GB of CUDA packages on a CPU machine.
# - installs gstalker-ns in editable mode (its ns-train / gstalker-* entry points) and a .pth
#   start-up hook that makes torchvision importable next to a CPU-only torch.
# - playwright (Python package only) is for the viewer's browser test, which drives Debian's
#   chromium; that test installs chromium with apt-get itself (or says why it skips).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.gstalker-setup"
want=$(cat pyproject.toml scripts/constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import gstalker_ns, nerfstudio" 2>/dev/null; then
  echo "[setup] environment up to date ($VENV)"
  exit 0
fi

echo "[setup] creating/updating $VENV (first run takes about 2-3 minutes) ..."
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c scripts/constraints.txt \
  torch==2.13.0 torchvision==0.28.0 nerfstudio==1.1.5 gsplat==1.4.0 viser==0.2.7 \
  librosa av imageio-ffmpeg transformers pyyaml pytest playwright
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
# mediapipe 0.10.21 is the last release that ships face mesh / segmentation models in its wheel.
# It needs protobuf 4.25 (3.20 misparses its graphs) while nerfstudio declares protobuf<=3.20.3,
# so it goes in a second, dependency-free step (nerfstudio and tensorboard work with 4.25; its
# other needs, jax and opencv-contrib, are not used by face mesh: opencv-python-headless serves).
"$VENV/bin/python" -m pip install -q --no-deps mediapipe==0.10.21 protobuf==4.25.8 flatbuffers==25.12.19 2>&1 \
  | grep -v "dependency resolver\|nerfstudio .* requires protobuf\|mediapipe .* requires" || true

site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "import gstalker_ns._startup" > "$site/gstalker_ns_startup.pth"

"$VENV/bin/python" - <<'PY'
import torch, torchvision, nerfstudio, gsplat  # noqa: F401  (the start-up hook makes torchvision import)
import mediapipe, google.protobuf
assert google.protobuf.__version__.startswith("4.25"), google.protobuf.__version__
assert hasattr(mediapipe, "solutions"), "mediapipe without bundled models"
from nerfstudio.plugins.registry import discover_methods
methods, _ = discover_methods()
assert "gstalker" in methods, "gstalker method not registered"
print(f"[setup] ok: torch {torch.__version__}, nerfstudio, gsplat {gsplat.__version__}; ns-train lists gstalker")
PY
echo "$want" > "$STAMP"
