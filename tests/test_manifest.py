import json

import pytest

from xopt import manifest as mf
from xopt.errors import XoptError


def _write(tmp_path, name="d", force=False):
    out = tmp_path / name
    with mf.atomic_dir(out, force=force) as tmp:
        (tmp / "weights.bin").write_bytes(b"\x01" * 100)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f.txt").write_text("hello")
        mf.write(tmp, kind="variant", source={"checkpoint": "x"}, extra={"variant": "fp32"})
    return out


def test_round_trip_and_hashes(tmp_path):
    out = _write(tmp_path)
    man = mf.read(out, kind="variant")
    assert set(man["files"]) == {"weights.bin", "sub/f.txt"}
    for key in ("xopt_version", "created", "host", "source", "files", "variant"):
        assert key in man
    assert oct(out.stat().st_mode & 0o777) != "0o700"


def test_tamper_and_missing_file_detected(tmp_path):
    out = _write(tmp_path)
    (out / "weights.bin").write_bytes(b"\x02" * 100)
    with pytest.raises(XoptError, match="does not match its manifest hash"):
        mf.read(out)
    (out / "weights.bin").unlink()
    with pytest.raises(XoptError, match="missing"):
        mf.read(out)


def test_foreign_corrupt_and_wrong_kind(tmp_path):
    out = _write(tmp_path)
    with pytest.raises(XoptError, match="expected a checkpoint"):
        mf.read(out, kind="checkpoint")
    (out / mf.MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(XoptError, match="not an xopt manifest"):
        mf.read(out)
    (out / mf.MANIFEST).write_text("{")
    with pytest.raises(XoptError, match="corrupt manifest"):
        mf.read(out)
    with pytest.raises(XoptError, match="no manifest.json"):
        mf.read(tmp_path)


def test_atomic_dir_refuses_existing_and_leaves_nothing_on_failure(tmp_path):
    _write(tmp_path)
    with pytest.raises(XoptError, match="--force"):
        _write(tmp_path)
    with pytest.raises(RuntimeError):
        with mf.atomic_dir(tmp_path / "new") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-build")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    _write(tmp_path, force=True)      # replacing works and leaves no temp dirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
