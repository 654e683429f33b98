#!/usr/bin/env bash
# The CPU test suite under torch 2.11.0, the torch of the GPU machine (CI
# runs 2.14.1). Run it before every GPU run (issue 18): what breaks only on
# 2.11 (dynamo could not trace torch.amp.is_autocast_available, so
# `sltrain-train --compile` failed) would otherwise cost GPU minutes there.
#
#   bash benchmarks/check_torch211.sh            # makes the venv once (VENV, default .venv-torch211)
#   bash benchmarks/check_torch211.sh -k compile # extra arguments go to pytest
#
# The extension is built CPU-only in a temporary copy of the checkout, so the
# build for this checkout's own torch (sltrain_ext/_C*.so, build/) is left as
# it is. About 2 minutes for the venv, 1 for the build, then the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath -m "${VENV:-.venv-torch211}")
TORCH_VERSION=2.11.0

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" pytest expecttest hypothesis numpy ninja tqdm \
      safetensors transformers sentencepiece pyarrow matplotlib "setuptools>=64" wheel tokenizers
fi

copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -C "$copy" -xf -
cd "$copy"
SLTRAIN_FORCE_CPU=1 MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" setup.py build_ext --inplace > build.log 2>&1 \
  || { tail -n 30 build.log; exit 1; }
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
