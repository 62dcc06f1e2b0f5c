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
    (out / mf.MANIFEST).write_text("[" * 100_000 + "]" * 100_000)     # past the JSON parser's stack
    with pytest.raises(XoptError, match=r"corrupt manifest: malformed JSON \(nested too deeply"):
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


def test_edited_manifest_is_refused_in_one_line(tmp_path):
    out = _write(tmp_path)
    man = json.loads((out / mf.MANIFEST).read_text())
    assert man[mf.HASH_FIELD] == mf.content_hash(man)
    man["variant"] = "fp16"
    (out / mf.MANIFEST).write_text(json.dumps(man))
    with pytest.raises(XoptError, match="manifest.json was edited after it was written; rebuild with `xopt compile"):
        mf.read(out, verify=False)
    del man[mf.HASH_FIELD]
    (out / mf.MANIFEST).write_text(json.dumps(man))
    with pytest.raises(XoptError, match="has no content hash"):
        mf.read(out)


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/passwd", "sub/../../x", "link/escape.txt"])
def test_file_names_leaving_the_directory_are_refused_on_read(tmp_path, name):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "escape.txt").write_text("x")
    out = _write(tmp_path)
    (out / "link").symlink_to(tmp_path / "elsewhere")
    man = json.loads((out / mf.MANIFEST).read_text())
    man["files"][name] = "0" * 64
    man[mf.HASH_FIELD] = mf.content_hash(man)
    (out / mf.MANIFEST).write_text(json.dumps(man))
    with pytest.raises(XoptError, match="leads outside the directory"):
        mf.read(out, verify=False)


def test_link_leaving_the_directory_is_refused_on_write(tmp_path):
    (tmp_path / "secret.txt").write_text("x")
    with pytest.raises(XoptError, match="leads outside the directory"):
        with mf.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "escape.txt").symlink_to(tmp_path / "secret.txt")
            mf.write(tmp, kind="variant", source={})
    assert not (tmp_path / "d").exists()


def test_force_replaces_only_the_same_kind_or_an_empty_dir(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(XoptError, match=r"mine holds 1 entry not written by xopt \(thesis.tex\); --force replaces "
                                        r"only a variant directory"):
        with mf.atomic_dir(mine, force=True, kind="variant"):
            pass
    with pytest.raises(XoptError, match="holds 1 entry not written by xopt"):   # kind known only after the build
        _write(tmp_path, "mine", force=True)
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]

    ckpt = tmp_path / "ckpt"
    with mf.atomic_dir(ckpt) as tmp:
        mf.write(tmp, kind="checkpoint", source={})
    with pytest.raises(XoptError, match="ckpt holds an xopt checkpoint directory; --force replaces only a variant"):
        _write(tmp_path, "ckpt", force=True)
    assert mf.read(ckpt)["kind"] == "checkpoint"

    (tmp_path / "empty").mkdir()
    _write(tmp_path, "empty", force=True)
    _write(tmp_path, "empty", force=True)
    assert mf.read(tmp_path / "empty", kind="variant")

    (tmp_path / "afile").write_text("x")
    with pytest.raises(XoptError, match="afile holds a file, not a directory"):
        _write(tmp_path, "afile", force=True)


def test_directories_without_a_manifest_are_stamped_and_replaceable(tmp_path):
    state = tmp_path / "state"
    for n in range(2):
        with mf.atomic_dir(state, force=True) as tmp:
            (tmp / "state.json").write_text(str(n))
    assert (state / "state.json").read_text() == "1" and mf.dir_kind(state) == mf.SCRATCH
    with pytest.raises(XoptError, match="state holds an xopt scratch directory"):
        _write(tmp_path, "state", force=True)
