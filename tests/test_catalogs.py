import os

import pytest

from mofile import mo_bytes
from xopt.errors import XoptError
from xopt.tasks.catalogs import locale_catalogs, read_mo


def test_read_mo_little_and_big_endian_with_context_and_plural(tmp_path):
    entries = [("File", "Datei"), ("%d file\x00%d files", "%d Datei\x00%d Dateien"), ("Open", "Öffnen")]
    for be in (False, True):
        p = tmp_path / f"x{be}.mo"
        p.write_bytes(mo_bytes(entries, big_endian=be, context={2: "Stock label"}))
        got = {(e.context, e.source): e.target for e in read_mo(p)}
        assert got == {("", "File"): "Datei", ("", "%d file"): "%d Datei", ("Stock label", "Open"): "Öffnen"}


def test_read_mo_wrong_header_charset_falls_back_to_utf8(tmp_path):
    p = tmp_path / "bad.mo"
    p.write_bytes(mo_bytes([("Password", "Пароль")], charset="bogus-charset"))
    assert [e.target for e in read_mo(p)] == ["Пароль"]


def test_read_mo_rejects_bad_magic_and_truncation(tmp_path):
    p = tmp_path / "junk.mo"
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(XoptError, match="bad magic"):
        read_mo(p)
    good = mo_bytes([("a b", "c d")])
    p.write_bytes(good[:40])
    with pytest.raises(XoptError, match="truncated"):
        read_mo(p)


def test_locale_catalogs_skips_symlinks_and_english(tmp_path):
    for loc in ("de", "en_GB", "en@quot"):
        d = tmp_path / loc / "LC_MESSAGES"
        d.mkdir(parents=True)
        (d / "coreutils.mo").write_bytes(mo_bytes([("x y", "z w")]))
    os.symlink(tmp_path / "de" / "LC_MESSAGES" / "coreutils.mo", tmp_path / "de" / "LC_MESSAGES" / "glib20.mo")
    found = locale_catalogs(tmp_path, ("coreutils", "glib20"))
    assert list(found) == ["de"]
    assert list(found["de"]) == ["coreutils"]
