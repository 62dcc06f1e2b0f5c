"""Read gettext `.mo` catalogs: a real, human-translated parallel corpus on every Debian machine.

We parse the binary format ourselves instead of using `gettext.GNUTranslations`: a few
catalogs shipped by Debian carry a header charset that the stdlib refuses, and we want the
raw msgid/msgstr pairs (contexts and plural forms included), not a lookup table.

Format (GNU gettext manual, "The Format of GNU MO Files"): magic 0x950412de, revision,
N strings, offset of the original-strings table, offset of the translation table; each
table holds N (length, offset) pairs of uint32. A msgid may carry a context
(`ctx\\x04msgid`) and plural forms (`singular\\x00plural`); a msgstr holds plural forms
separated by NUL.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from xopt.errors import XoptError

MO_MAGIC = 0x950412DE

# The Debian packages that bring the catalogs the demo suite uses. A fixed catalog list
# (not "whatever is installed") keeps the suite identical on every machine that has them.
DEBIAN_PACKAGES = (
    "coreutils", "libglib2.0-data", "libgtk2.0-common", "shared-mime-info",
    "libpam-runtime", "iso-codes", "libgdk-pixbuf2.0-common",
)
APT_LINE = "apt-get install -y --no-install-recommends " + " ".join(DEBIAN_PACKAGES)

LOCALE_DIR = Path("/usr/share/locale")


@dataclass(frozen=True)
class Pair:
    catalog: str   # domain, e.g. "coreutils"
    context: str   # msgctxt, "" when none
    source: str    # English msgid (singular)
    target: str    # translation (first plural form)


def read_mo(path: str | os.PathLike) -> list[Pair]:
    """All translated (msgid, msgstr) pairs of one `.mo` file; the header entry is dropped."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 20:
        raise XoptError(f"{path}: not a gettext .mo file (too short)")
    (magic,) = struct.unpack_from("<I", data, 0)
    if magic == MO_MAGIC:
        end = "<"
    elif struct.unpack_from(">I", data, 0)[0] == MO_MAGIC:
        end = ">"
    else:
        raise XoptError(f"{path}: not a gettext .mo file (bad magic)")
    _rev, n, orig_off, trans_off = struct.unpack_from(end + "4I", data, 4)
    if orig_off + 8 * n > len(data) or trans_off + 8 * n > len(data):
        raise XoptError(f"{path}: truncated .mo file")
    catalog = path.stem
    charset = "utf-8"
    pairs = []
    for i in range(n):
        olen, ooff = struct.unpack_from(end + "2I", data, orig_off + 8 * i)
        tlen, toff = struct.unpack_from(end + "2I", data, trans_off + 8 * i)
        if ooff + olen > len(data) or toff + tlen > len(data):
            raise XoptError(f"{path}: truncated .mo file (string {i})")
        msgid = data[ooff:ooff + olen]
        msgstr = data[toff:toff + tlen]
        if not msgid:  # the header: pick up its charset
            m = re.search(rb"charset=([A-Za-z0-9_.:-]+)", msgstr)
            if m:
                charset = m.group(1).decode("ascii", "replace")
            continue
        try:
            src = msgid.decode("utf-8")
            tgt = msgstr.decode(charset)
        except (UnicodeDecodeError, LookupError):
            try:  # a wrong header charset is common; most such catalogs are UTF-8 anyway
                tgt = msgstr.decode("utf-8")
            except UnicodeDecodeError:
                continue
        ctx, _, src = src.rpartition("\x04")
        src = src.split("\x00")[0]
        tgt = tgt.split("\x00")[0]
        if src and tgt:
            pairs.append(Pair(catalog, ctx, src, tgt))
    return pairs


def locale_catalogs(locale_dir: Path, catalogs: tuple[str, ...]) -> dict[str, dict[str, Path]]:
    """{locale folder: {catalog: path}} for the wanted catalogs; symlinks and English skipped."""
    out: dict[str, dict[str, Path]] = {}
    if not locale_dir.is_dir():
        return out
    for loc in sorted(os.listdir(locale_dir)):
        if loc == "en" or loc.startswith(("en@", "en_")):
            continue
        d = locale_dir / loc / "LC_MESSAGES"
        if d.is_symlink() or (locale_dir / loc).is_symlink() or not d.is_dir():
            continue
        found = {}
        for cat in catalogs:
            p = d / f"{cat}.mo"
            if p.is_file() and not p.is_symlink():
                found[cat] = p
        if found:
            out[loc] = found
    return out
