#!/usr/bin/env bash
# Create or refresh the virtual environment with everything bitdet needs: torch/torchvision,
# bitdet (editable) with its dependencies and test tools, detectron2, and the offline data
# packages. Idempotent: when its inputs have not changed since the last success it returns
# at once.
#
#   VENV=.venv PYTHON=python3 BITDET_CONSTRAINTS=tools/constraints.txt bash tools/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
CONSTRAINTS=${BITDET_CONSTRAINTS:-tools/constraints.txt}
STAMP="$VENV/.bitdet-setup"
say() { echo "[setup] $*"; }

inputs_hash=$(cat setup.py "$CONSTRAINTS" tools/setup_env.sh tools/install_detectron2.py \
    tools/fetch_test_fixtures.py | sha256sum | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$inputs_hash" ]] \
    && "$VENV/bin/python" -c "import bitdet, detectron2, torchvision" 2>/dev/null; then
    say "environment $VENV is up to date"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# torch's CUDA build is most of the environment (README.md, Install): say so up front rather
# than fail half-installed.
NEED_MB=7000
if ! "$PY" -c "import torch" 2>/dev/null; then
    free_mb=$(df -Pm "$VENV" | awk 'NR==2 {print $4}')
    if (( free_mb < NEED_MB )); then
        say "ERROR: installing torch into $VENV needs about $((NEED_MB / 1000)) GB free; $free_mb MB free there"
        exit 1
    fi
fi
"${PIP[@]}" install --quiet --upgrade "pip>=23" wheel

say "torch and torchvision (pinned by $CONSTRAINTS)"
"${PIP[@]}" install --quiet -c "$CONSTRAINTS" torch torchvision

say "bitdet and its dependencies"
"${PIP[@]}" install --quiet -c "$CONSTRAINTS" -e ".[dev]"

say "detectron2"
"$PY" tools/install_detectron2.py --constraint "$CONSTRAINTS" --wheel-dir "$VENV/wheels"

# Fashion-MNIST (real images, used by the demo and tests) from Debian's package.
FMNIST=/usr/share/datasets/fashion-mnist
if [[ ! -d "$FMNIST" ]]; then
    if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
        say "installing Debian package dataset-fashion-mnist"
        apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
            || say "WARNING: could not install dataset-fashion-mnist; pass --fashion-mnist-root or allow torchvision to download it"
    else
        say "WARNING: $FMNIST missing: run 'sudo apt-get install dataset-fashion-mnist' (or allow torchvision to download Fashion-MNIST)"
    fi
fi

# Real COCO-format annotation fixtures (labelme / sahi sdists) for the data-path tests. Only
# "cannot be fetched" (status 2) is a warning; a wrong sha256 or a missing file fails the set-up.
fixtures_status=0
"$PY" tools/fetch_test_fixtures.py || fixtures_status=$?
if [[ $fixtures_status == 2 ]]; then
    say "WARNING: could not fetch the COCO fixtures; their tests will be skipped with that reason"
elif [[ $fixtures_status != 0 ]]; then
    say "ERROR: the COCO fixtures failed their integrity check (see above)"; exit 1
fi

"$PY" -c "import bitdet, detectron2, torch, torchvision, pycocotools, cv2, fvcore; print('[setup] ok: torch', torch.__version__, '| torchvision', torchvision.__version__, '| detectron2', detectron2.__version__)"
echo "$inputs_hash" > "$STAMP"
