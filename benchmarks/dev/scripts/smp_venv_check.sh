#!/usr/bin/env bash
# The smp (segmentation-models-pytorch) tests, which CI skips: PyPI's torchvision does not import beside
# the CPU torch 2.13.0 the project pins. This builds a separate venv with the torch 2.14.1 and
# torchvision 0.29.1 that lie on the development machines' disk (a 6 GB CUDA build, run on the CPU),
# installs the project and smp, and runs the smp model tests and every segmenter method with an smp
# UNet. Usage: benchmarks/dev/scripts/smp_venv_check.sh [VENV_DIR]   (default /tmp/smpenv)
set -euo pipefail
MAIN=$(cd "$(dirname "$0")/../../.." && pwd)
VENV=${1:-/tmp/smpenv}
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV"
. "$VENV/bin/activate"
pip install -q torch==2.14.1 torchvision==0.29.1
pip install -q -e "$MAIN[test]" segmentation-models-pytorch
python -c "import torch, torchvision, segmentation_models_pytorch as smp; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'smp', smp.__version__)"
cd "$MAIN"
OMP_NUM_THREADS=1 pytest -q -p no:cacheprovider tests/models/test_models.py -k "Smp or every_registered"
OMP_NUM_THREADS=1 pytest -q -p no:cacheprovider tests/methods/test_methods.py -k smp
