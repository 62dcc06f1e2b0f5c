"""Manifests of checkpoint and variant directories, and atomic directory writes.

A directory is written into a sibling temp dir, every file fsync'ed, then renamed into
place: a crash leaves either the old directory or the new one, never half of one.
`manifest.json` records what the directory holds (`files`: name -> sha256) and where it
came from (`source`); `read` checks both, so a tampered, truncated or foreign directory
is refused with a message instead of being loaded. Nothing here unpickles anything.

`manifest.json` carries `manifest_sha256`, the sha256 of its own content without that field
(canonical JSON: sorted keys, no spaces), so an edited manifest is refused like an edited file.
File names in `files` are relative paths inside the directory; `..`, absolute names and links
leading out of it are refused on write and on read.

`--force` replaces only what xopt wrote: a directory whose `manifest.json` is of the same kind
as the one being written, or one stamped by `atomic_dir` with the same kind (`.xopt-dir`, for
directories without a manifest: training state, exports), or an empty one. Anything else is
refused with one line naming the directory and what it holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from xopt import __version__
from xopt.errors import XoptError, parse_json
from xopt.host import host_info

MANIFEST = "manifest.json"
FORMAT = "xopt-manifest/1"
HASH_FIELD = "manifest_sha256"
# Written by atomic_dir into a directory that has no manifest.json: {"kind": ...}.
STAMP = ".xopt-dir"
# Kind of a directory written without a manifest and without a named kind.
SCRATCH = "scratch"

# The command that rebuilds a directory of each kind, for refusal messages.
REBUILD = {"variant": "`xopt compile {checkpoint} --variant {variant} --out {dir} --force`",
           "checkpoint": "`xopt train ... --out {dir} --force` (or `xopt import ... --out {dir} --force`)",
           "report": "`xopt report RESULTS.. --out {dir} --force`"}


def _rebuild(directory: Path, man: dict) -> str:
    """The command that rebuilds `directory`, filled in from its manifest where it can be."""
    source = man.get("source") if isinstance(man.get("source"), dict) else {}
    fields = {"dir": directory, "checkpoint": source.get("checkpoint") or "CHECKPOINT",
              "variant": man.get("variant") if isinstance(man.get("variant"), str) else "NAME"}
    kind = man.get("kind")
    return REBUILD.get(kind, "--force").format(**fields) if isinstance(kind, str) else "--force"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def content_hash(man: dict) -> str:
    """sha256 of a manifest's content without its own hash field (canonical JSON)."""
    body = {k: v for k, v in man.items() if k != HASH_FIELD}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


def dir_kind(path: Path) -> str | None:
    """The kind of an xopt directory (its manifest's, else its stamp's), or None for anything else."""
    path = Path(path)
    for name, key in ((MANIFEST, "kind"), (STAMP, "kind")):
        f = path / name
        if f.is_file():
            try:
                data = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                return None
            if not isinstance(data, dict) or (name == MANIFEST and data.get("format") != FORMAT):
                return None
            kind = data.get(key)
            return kind if isinstance(kind, str) else None
    return None


def _holds(path: Path) -> str:
    """What a directory that is not replaceable holds, in a few words."""
    if not path.is_dir():
        return "a file, not a directory"
    kind = dir_kind(path)
    if kind:
        return f"an xopt {kind} directory"
    names = sorted(p.name for p in path.iterdir())
    if (path / MANIFEST).is_file():
        return "a manifest.json that is not an xopt manifest"
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'} not written by xopt ({', '.join(names[:3])}" + \
        (", ..." if len(names) > 3 else "") + ")"


def check_replaceable(out: Path, kind: str | None) -> None:
    """Refuse (one line) to replace `out` unless it is empty or an xopt directory of `kind`
    (any xopt kind when `kind` is None: the caller checks again once the kind is known)."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    have = dir_kind(out) if out.is_dir() and not out.is_symlink() else None
    if have is not None and (kind is None or have == kind):
        return
    what = "a symlink" if out.is_symlink() else _holds(out)
    want = f"a {kind} directory" if kind else "an xopt directory"
    raise XoptError(f"{out} holds {what}; --force replaces only {want} (or an empty one): remove it yourself "
                    "or choose another output")


def stamp(directory: Path, kind: str) -> None:
    """Mark a directory that xopt fills step by step (a demo's output) as an xopt directory of `kind`."""
    atomic_write(Path(directory) / STAMP, json.dumps({"kind": kind}) + "\n")


@contextlib.contextmanager
def atomic_dir(out: Path, force: bool = False, kind: str | None = None):
    """Yield a temp dir next to `out`; on success move it to `out`.

    An existing `out` is replaced only with `force`, and only when it is empty or an xopt
    directory of the kind being written: `kind`, else the kind of the manifest the caller
    wrote into the temp dir. A directory written without a manifest is stamped with `kind`
    (or "scratch") so that the next `force` can recognise it."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not force:
            raise XoptError(f"{out} already exists; pass --force to replace it")
        check_replaceable(out, kind)     # before the work: a foreign directory is refused at once
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)   # mkdtemp's 0700 would make shared results unreadable
    try:
        yield tmp
        if not (tmp / MANIFEST).is_file():
            (tmp / STAMP).write_text(json.dumps({"kind": kind or SCRATCH}) + "\n")
        new_kind = dir_kind(tmp) or kind or SCRATCH
        _fsync_tree(tmp)
        if out.exists() or out.is_symlink():
            check_replaceable(out, new_kind)
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: Path, text: str) -> Path:
    """One file written atomically: temp file in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


sha256 = sha256_file


def _inside(directory: Path, name: str) -> bool:
    """Whether file name `name` (from a manifest) stays inside `directory`: relative, no `..`,
    and not a link that leads out of it."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or rel.parts[:1] == ("",):
        return False
    root = directory.resolve()
    return (root / rel).resolve().is_relative_to(root)


def write(directory: Path, *, kind: str, source: dict, extra: dict | None = None) -> dict:
    """Hash every file in `directory` and write its manifest (call last, inside atomic_dir)."""
    directory = Path(directory)
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            name = str(p.relative_to(directory))
            if not _inside(directory, name):
                raise XoptError(f"{name} leads outside the directory being written (to {p.resolve()}); a "
                                "manifest lists only files inside its directory")
            files[name] = sha256(p)
    man = {"format": FORMAT, "kind": kind, "xopt_version": __version__, "created": now(),
           "host": host_info(), "source": source, **(extra or {}), "files": files}
    man.pop(HASH_FIELD, None)
    man[HASH_FIELD] = content_hash(man)
    (directory / MANIFEST).write_text(json.dumps(man, indent=2, ensure_ascii=False) + "\n")
    return man


def read(directory: Path, *, kind: str | None = None, verify: bool = True) -> dict:
    """Load and check a manifest: format, kind, its own content hash, the file names, and (if
    `verify`) every file's sha256."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise XoptError(f"{directory}: no such directory")
    if not path.is_file():
        raise XoptError(f"{directory}: no {MANIFEST}; not an xopt directory (build one with `xopt compile`)")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise XoptError(f"{path}: corrupt manifest ({e}); rebuild the directory") from None
    man = parse_json(text, path, "rebuild the directory", "corrupt manifest")
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise XoptError(f"{path}: not an xopt manifest (format {man.get('format') if isinstance(man, dict) else '?'!r})")
    rebuild = _rebuild(directory, man)
    if man.get(HASH_FIELD) != content_hash(man):
        what = "has no content hash (written by an xopt that did not hash manifests)" if HASH_FIELD not in man \
            else "was edited after it was written"
        raise XoptError(f"{directory}: {MANIFEST} {what}; rebuild with {rebuild}")
    if kind and man.get("kind") != kind:
        raise XoptError(f"{directory}: is a {man.get('kind')} directory, expected a {kind} directory")
    files = man.get("files", {})
    if not isinstance(files, dict):
        raise XoptError(f"{path}: corrupt manifest (files is not an object); rebuild with {rebuild}")
    for name in files:
        if not _inside(directory, name):
            raise XoptError(f"{path}: file name {name!r} leads outside the directory; rebuild with {rebuild}")
    if verify:
        for name, digest in files.items():
            p = directory / name
            if not p.is_file():
                raise XoptError(f"{directory}: {name} is listed in the manifest but missing; rebuild with --force")
            if sha256(p) != digest:
                raise XoptError(f"{directory}: {name} does not match its manifest hash (modified or corrupt); "
                                "rebuild with --force")
    return man

