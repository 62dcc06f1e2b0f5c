"""Manifests of checkpoint and variant directories, and atomic directory writes.

A directory is written into a sibling temp dir, every file fsync'ed, then renamed into
place: a crash leaves either the old directory or the new one, never half of one.
`manifest.json` records what the directory holds (`files`: name -> sha256) and where it
came from (`source`); `read` checks both, so a tampered, truncated or foreign directory
is refused with a message instead of being loaded. Nothing here unpickles anything.
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
from xopt.errors import XoptError
from xopt.host import host_info

MANIFEST = "manifest.json"
FORMAT = "xopt-manifest/1"


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


@contextlib.contextmanager
def atomic_dir(out: Path, force: bool = False):
    """Yield a temp dir next to `out`; on success move it to `out` (replacing it if `force`)."""
    out = Path(out)
    if out.exists() and not force:
        raise XoptError(f"{out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)   # mkdtemp's 0700 would make shared results unreadable
    try:
        yield tmp
        _fsync_tree(tmp)
        if out.exists():
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


def write(directory: Path, *, kind: str, source: dict, extra: dict | None = None) -> dict:
    """Hash every file in `directory` and write its manifest (call last, inside atomic_dir)."""
    directory = Path(directory)
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[str(p.relative_to(directory))] = sha256(p)
    man = {"format": FORMAT, "kind": kind, "xopt_version": __version__, "created": now(),
           "host": host_info(), "source": source, **(extra or {}), "files": files}
    (directory / MANIFEST).write_text(json.dumps(man, indent=2, ensure_ascii=False) + "\n")
    return man


def read(directory: Path, *, kind: str | None = None, verify: bool = True) -> dict:
    """Load and check a manifest: format, kind, and (if `verify`) every file's sha256."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise XoptError(f"{directory}: no such directory")
    if not path.is_file():
        raise XoptError(f"{directory}: no {MANIFEST}; not an xopt directory (build one with `xopt compile`)")
    try:
        man = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XoptError(f"{path}: corrupt manifest ({e}); rebuild the directory") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise XoptError(f"{path}: not an xopt manifest (format {man.get('format') if isinstance(man, dict) else '?'!r})")
    if kind and man.get("kind") != kind:
        raise XoptError(f"{directory}: is a {man.get('kind')} directory, expected a {kind} directory")
    if verify:
        for name, digest in man.get("files", {}).items():
            p = directory / name
            if not p.is_file():
                raise XoptError(f"{directory}: {name} is listed in the manifest but missing; rebuild with --force")
            if sha256(p) != digest:
                raise XoptError(f"{directory}: {name} does not match its manifest hash (modified or corrupt); "
                                "rebuild with --force")
    return man
