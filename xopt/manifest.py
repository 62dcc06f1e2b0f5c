"""Manifests of checkpoint and variant directories, and atomic directory writes.

A directory is written into a sibling temp dir, every file fsync'ed, then renamed into
place: a crash leaves either the old directory or the new one, never half of one. The writer
holds the output's lock (`.NAME.lock` beside it) meanwhile: a second writer of the same output
is refused, and the next writer removes what a killed one left.
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
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from xopt import __version__
from xopt.errors import XoptError, disk_full, is_disk_full, parse_json
from xopt.host import host_info

MANIFEST = "manifest.json"
FORMAT = "xopt-manifest/1"
HASH_FIELD = "manifest_sha256"
# Written by atomic_dir into a directory that has no manifest.json: {"kind": ...}.
STAMP = ".xopt-dir"
# Kind of a directory written without a manifest and without a named kind.
SCRATCH = "scratch"
# Lock files (`.NAME.lock`) this process holds: `output_lock` is re-entrant.
_HELD: set[Path] = set()

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


def _leftovers(out: Path) -> list[Path]:
    """The work dirs (`.NAME.tmp-*`) and replaced dirs (`.NAME.old-*`) of earlier writes of `out`."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-[\w-]+")
    return [p for p in out.parent.iterdir() if pattern.fullmatch(p.name)]


def _acquire(path: Path, out: Path) -> int:
    """An fd holding the exclusive flock of lock file `path`, with this pid written in it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise XoptError(f"{out} is being written by another xopt process (pid {holder}); wait for it to "
                            "finish, or choose another output") from None
        try:      # a holder that finished unlinks the file: a lock on that unlinked file locks nothing
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def output_lock(out: Path):
    """Hold the lock of output `out` (an flock on `.NAME.lock` beside it) for the block.

    A second process that writes `out` meanwhile is refused in one line naming the holder's pid.
    The kernel drops the lock of a process that dies, so the work dirs of earlier writes of `out`
    found while holding it belong to dead runs, and are removed. Re-entrant within a process (a
    training run's lock covers the checkpoint it writes into the same directory)."""
    out = Path(os.path.abspath(out))
    path = out.parent / f".{out.name}.lock"
    if path in _HELD:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, out)
    _HELD.add(path)
    try:
        for p in _leftovers(out):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
        yield
    finally:
        _HELD.discard(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _written(out: Path, name: str | None) -> Path:
    """The path a failed write of `out` names: a file of the staged dir as it would be in `out`,
    the output itself for its temp files or a write without a file name."""
    if not name:
        return out
    parts = Path(os.path.abspath(name)).parts
    for i, part in enumerate(parts[:-1]):
        if part.startswith(f".{out.name}.tmp-") and Path(*parts[:i]) == out.parent:
            return out.joinpath(*parts[i + 2:]) if parts[i + 1] == "new" else out
    return Path(name)


@contextlib.contextmanager
def _full_disk_is_one_line(out: Path, need_bytes: int | None):
    """A full disk while `out` is written (an OSError, or a library's error that says so) becomes
    one XoptError, raised once the write's files are removed, so the free space it gives is real."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err) or os.environ.get("XOPT_DEBUG") == "1":    # debug: the error as raised
            raise
        name = (getattr(err, "filename2", None) or getattr(err, "filename", None)) if isinstance(err, OSError) else None
        raise XoptError(f"{disk_full(_written(out, name), need_bytes)}: free space or write elsewhere; nothing "
                        "half-written is kept") from err


@contextlib.contextmanager
def atomic_dir(out: Path, force: bool = False, kind: str | None = None, need_bytes: int | None = None):
    """Yield a temp dir for `out`, holding `out`'s lock; on success move it to `out`.

    An existing `out` is replaced only with `force`, and only when it is empty or an xopt
    directory of the kind being written: `kind`, else the kind of the manifest the caller
    wrote into the temp dir. A directory written without a manifest is stamped with `kind`
    (or "scratch") so that the next `force` can recognise it.

    The temp dir is `new/` inside a work dir beside `out` (`.NAME.tmp-PID-*`); while the block
    runs, Python's temp files (xopt's exports, libraries' scratch files) go to its `scratch/`, so
    every temp file of the write is removed with the work dir, or by the next write of `out`
    after a kill. A full disk is one line naming the file system, the file and, with
    `need_bytes` (the writer's estimate of the output's size), what it needs."""
    out = Path(out)
    with output_lock(out), _full_disk_is_one_line(out, need_bytes):
        if out.exists() or out.is_symlink():
            if not force:
                raise XoptError(f"{out} already exists; pass --force to replace it")
            check_replaceable(out, kind)     # before the work: a foreign directory is refused at once
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        tmp, scratch = work / "new", work / "scratch"
        try:
            tmp.mkdir()          # the umask's mode, not mkdtemp's 0700: shared results stay readable
            scratch.mkdir()
            saved, tempfile.tempdir = tempfile.tempdir, str(scratch)
            try:
                yield tmp
            finally:
                tempfile.tempdir = saved
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
        finally:
            shutil.rmtree(work, ignore_errors=True)


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

