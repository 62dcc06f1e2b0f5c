#!/usr/bin/env bash
# Download the wheels of bench/gpu_wheels.txt (CPython 3.12, manylinux x86-64) into .whl/ at the
# repository root, and the demo suite (built here from the gettext catalogs) beside them, for
# bench/gpu_check.py on a GPU machine without network. Run on a machine with network:
#   bash bench/fetch_gpu_wheels.sh            # then carry .whl/ to the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
mkdir -p "$DEST"
PY=${PYTHON:-python3}
grep -vE '^\s*(#|$)' bench/gpu_wheels.txt | while read -r spec; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST" "$spec"
done
# The demo suite JSON (< 1 MB): the GPU machine may lack the Debian catalogs it is built from.
if "$PY" -c "import xopt" 2>/dev/null; then
  "$PY" -c "
import shutil, sys
from xopt.tasks.demo import ensure_suite
shutil.copyfile(ensure_suite(), sys.argv[1])" "$DEST/demo-suite.json" || echo "note: demo suite not built (no catalogs here)" >&2
fi
du -ch "$DEST"/*.whl | tail -1
"$PY" bench/gpu_check.py --check-wheels --wheels "$DEST"
