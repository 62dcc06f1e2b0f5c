"""Write GNU gettext .mo files (the real binary format) for tests."""

from __future__ import annotations

import struct
from pathlib import Path

MAGIC = 0x950412DE


def mo_bytes(entries: list[tuple[str, str]], charset: str = "UTF-8", big_endian: bool = False,
             context: dict[int, str] | None = None) -> bytes:
    """entries: (msgid, msgstr); the header entry is added. `context` maps an entry index to msgctxt."""
    header = f"Content-Type: text/plain; charset={charset}\nContent-Transfer-Encoding: 8bit\n"
    enc = "utf-8" if charset.lower() in ("utf-8", "bogus-charset") else charset
    items = [(b"", header.encode("ascii"))]
    for i, (msgid, msgstr) in enumerate(entries):
        key = (context[i] + "\x04" + msgid) if context and i in context else msgid
        items.append((key.encode("utf-8"), msgstr.encode(enc)))
    items.sort(key=lambda kv: kv[0])
    n = len(items)
    end = ">" if big_endian else "<"
    orig_off, trans_off = 28, 28 + 8 * n
    data_off = trans_off + 8 * n
    blob, orig, trans = b"", [], []
    for k, _ in items:
        orig.append((len(k), data_off + len(blob)))
        blob += k + b"\x00"
    for _, v in items:
        trans.append((len(v), data_off + len(blob)))
        blob += v + b"\x00"
    out = struct.pack(end + "7I", MAGIC, 0, n, orig_off, trans_off, 0, 0)
    out += b"".join(struct.pack(end + "2I", *p) for p in orig)
    out += b"".join(struct.pack(end + "2I", *p) for p in trans)
    return out + blob


SYL = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "zu", "be", "do"]
KANA = dict(zip(SYL, ["カ", "ロ", "ミ", "ネ", "ス", "タ", "リ", "ポ", "ヴェ", "ズ", "ベ", "ド"]))
CYR = dict(zip(SYL, ["ка", "ло", "ми", "не", "су", "та", "ри", "по", "ве", "зу", "бе", "до"]))


def word(i: int, n: int = 3) -> list[str]:
    out = []
    for _ in range(n):
        out.append(SYL[i % len(SYL)])
        i //= len(SYL)
    return out


def write_locale_tree(root: Path, catalogs: dict[str, str], per_catalog: int = 40,
                      langs=("de", "ru", "ja")) -> Path:
    """A /usr/share/locale-like tree: for each language and catalog, `per_catalog` pairs of
    distinct pseudo-words ('<Label> kalomi' -> translation in the language's script)."""
    for lang in langs:
        d = root / lang / "LC_MESSAGES"
        d.mkdir(parents=True, exist_ok=True)
        for c_i, (cat, label) in enumerate(catalogs.items()):
            entries = []
            for i in range(per_catalog):
                syl = word(i * 7 + c_i * 1000 + 3)
                src = f"{label.capitalize()} {''.join(syl)}"
                if lang == "ja":
                    tgt = "".join(KANA[s] for s in syl) + f"の{label}"
                elif lang == "ru":
                    tgt = f"{''.join(CYR[s] for s in syl)} ({label[::-1]})"
                else:
                    tgt = f"{label[::-1].capitalize()} {''.join(syl[::-1])}"
                entries.append((src, tgt))
            entries += [("%s: %s", "%s : %s"), ("_Open", "_Öffnen"), ("Open", "Öffnen2")]
            (d / f"{cat}.mo").write_bytes(mo_bytes(entries))
    return root
