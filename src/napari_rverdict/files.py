"""Writing files so that nothing a user had is lost: one atomic write for every file the tool writes, sets of files
that appear whole or not at all, and checks of an output before long work starts.

* :func:`atomic_path` — a context manager yielding a temporary path beside the target (same suffixes, so writers
  that choose the format from the name — nibabel, NumPy, matplotlib — work); on success it is renamed over the
  target (``os.replace``, atomic on one file system), on failure removed. The target keeps its permissions
  (a new file gets the usual ``0o666 & ~umask``).
* :class:`FileSet` — several files committed together: every temporary file is written first, then all are
  renamed; a failure before the renames leaves every target as it was.
* :func:`check_output_file` / :func:`check_output_dir` — refuse, before any work, an empty or unwritable output
  (probed by creating a file), a directory where a file is expected, an existing file without ``overwrite``, an
  output that is an input; :func:`check_distinct_outputs` — two outputs of one command that are one file.
* :func:`check_output_files` — the Python API's writers' check: :func:`check_output_file` for every file one call
  writes, before anything is written; the existing ones (without ``overwrite=True``) named in one InputError.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from napari_rverdict.errors import InputError


def _suffixes(path: Path) -> str:
    """``.nii.gz`` for ``dwi.nii.gz``; only short alphabetic suffixes count (``sub-01.ses-2`` has none)."""
    out = ""
    for s in reversed(path.suffixes):
        if not (1 < len(s) <= 5 and s[1:].isalnum()):
            break
        out = s + out
    return out


def _temporary_beside(path: Path) -> Path:
    suffixes = _suffixes(path)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    return path.with_name(f".{stem}.tmp-{secrets.token_hex(4)}{suffixes}")


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _commit(tmp: Path, path: Path) -> None:
    mode = path.stat().st_mode & 0o7777 if path.exists() else _default_mode()
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"bug: nothing was written to the temporary file for {path}")
        _commit(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def write_text(path, text: str, fileset: FileSet | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (or as part of ``fileset``)."""
    path = Path(path)
    with writing(path, fileset) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


@contextmanager
def writing(path, fileset: FileSet | None = None) -> Iterator[Path]:
    """The temporary path to write ``path`` through: its own :func:`atomic_path`, or one of ``fileset`` (committed
    with the set)."""
    if fileset is None:
        with atomic_path(path) as tmp:
            yield tmp
    else:
        yield fileset.path(path)


def check_name(name: str, what: str = "output name") -> str:
    """Refuse a file name that would leave its folder (``../x``, ``a/b``, absolute) or is empty."""
    text = str(name)
    if not text.strip() or "/" in text or "\\" in text or text in (".", "..") or text.startswith(".."):
        raise InputError(f"{what} '{text}' is not a plain file name (it must not leave the output folder)")
    return text


class FileSet:
    """Files written together: ``with FileSet() as files: writer(files.path(target))`` for each target.

    All temporary files are written inside the block; at its end they are renamed over their targets one after
    another (renames do not fail for lack of space). If the block raises, no target is touched.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def path(self, target) -> Path:
        target = Path(target)
        if any(t == target for _, t in self._pending):
            raise RuntimeError(f"bug: {target} is written twice in one set")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary_beside(target)
        self._pending.append((tmp, target))
        return tmp

    @property
    def targets(self) -> list[Path]:
        return [t for _, t in self._pending]

    def __enter__(self) -> FileSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            missing = [t for tmp, t in self._pending if not tmp.exists()]
            if missing:
                self._discard_all()
                raise RuntimeError(f"bug: nothing was written for {missing[0]}")
            for tmp, target in self._pending:
                _commit(tmp, target)
        else:
            self._discard_all()
        return False

    def _discard_all(self) -> None:
        for tmp, _ in self._pending:
            _discard(tmp)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_writable_dir(directory: Path, what: str) -> None:
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{what}: {existing} is a file, not a folder")
    if existing.exists():
        _probe_write(existing, what)


def _probe_write(directory: Path, what: str) -> None:
    """Create and remove a uniquely named empty file in ``directory``: the one test that holds for root, read-only
    mounts and pseudo file systems (``/sys``, ``/proc``) alike, where ``os.access`` says yes."""
    try:
        fd, name = tempfile.mkstemp(prefix=".rverdict-probe-", dir=directory)
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise InputError(f"{what}: cannot write in {directory} ({reason})") from None
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass


def check_distinct_outputs(outputs: Iterable[tuple[str, object]]) -> None:
    """Refuse, before any work, two outputs of one command that are one file (the second would replace the
    first). ``outputs``: ``(what, path)`` pairs, e.g. ``("--csv", args.csv)``; None paths are skipped. Paths are
    compared resolved (``..``, symbolic links) and, where both exist, as files (hard links)."""
    seen: list[tuple[str, Path, Path]] = []
    for what, path in outputs:
        if path is None or not str(path).strip():
            continue
        p = Path(path)
        resolved = p.resolve()
        for other_what, other, other_resolved in seen:
            if resolved == other_resolved or _same_file(p, other):
                raise InputError(f"{other_what} {other} and {what} {p} are one file (one output would replace the "
                                 "other); give each output its own name")
        seen.append((what, p, resolved))


def check_output_file(path, *, overwrite: bool = False, inputs: Iterable = (), what: str = "--out",
                      suffixes: tuple[str, ...] | None = None) -> Path:
    """Refuse an output file before any work: empty, a folder, not writable, an input, or existing without
    ``overwrite``. ``suffixes`` lists the accepted endings (the first is the one the writer adds)."""
    if path is None or not str(path).strip():
        raise InputError(f"{what} is empty: give a file name")
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder: give a file name")
    if suffixes and not any(path.name.endswith(s) for s in suffixes):
        raise InputError(f"{what} {path} must end with {' or '.join(suffixes)}")
    for p in inputs:
        if p is not None and _same_file(Path(p), path):
            raise InputError(f"{what} {path} is one of the inputs; choose another name")
    if path.exists() and not overwrite:
        raise InputError(f"{what} {path} exists; pass --overwrite to replace it")
    _check_writable_dir(path.parent if str(path.parent) else Path("."), what)
    return path


def check_output_files(paths, *, overwrite: bool = False, what: str = "file") -> list[Path]:
    """The check of the Python API's writers (``overwrite`` keyword-only, default False), before anything is
    written: :func:`check_output_file` for each of ``paths`` (the files one call writes together: a set is refused
    whole, so nothing is half-written), with every existing one named in a single InputError that says
    ``overwrite=True`` replaces them. Returns the paths."""
    paths = [Path(p) for p in paths]
    for p in paths:
        check_output_file(p, overwrite=True, what=what)  # empty, a folder, an unwritable place
    existing = [] if overwrite else [p for p in paths if p.exists()]
    if len(existing) == 1:
        raise InputError(f"{what} {existing[0]} exists; pass overwrite=True to replace it")
    if existing:
        shown = ", ".join(str(p) for p in existing[:3]) + (f" and {len(existing) - 3} more"
                                                           if len(existing) > 3 else "")
        raise InputError(f"{what}s {shown} exist; pass overwrite=True to replace them")
    return paths


def check_output_dir(directory, names: Iterable[str] = (), *, overwrite: bool = False, inputs: Iterable = (),
                     what: str = "--out") -> Path:
    """Refuse an output folder before any work: empty, a file, not writable, already holding files without
    ``overwrite`` (with it, only the files of ``names`` are replaced; the others are left alone), or an output name
    that is an input (refused even with ``overwrite``) or leaves the folder (``../x``)."""
    if directory is None or not str(directory).strip():
        raise InputError(f"{what} is empty: give a folder")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{what} {directory} is a file, not a folder")
    _check_writable_dir(directory, what)
    root = directory.resolve()
    clashes = []
    for name in names:
        target = (directory / name)
        if Path(name).is_absolute() or root not in target.resolve().parents:
            raise InputError(f"output name '{name}' leaves the folder {directory}")
        for p in inputs:
            if p is not None and _same_file(Path(p), target):
                raise InputError(f"{what} would replace the input {p}; choose another folder")
        if target.exists():
            clashes.append(target.name)
    if overwrite or not directory.exists():
        return directory
    if clashes:
        shown = ", ".join(clashes[:3]) + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else "")
        raise InputError(f"{what} {directory} already holds {shown}; pass --overwrite to replace them")
    others = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    if others:
        raise InputError(f"{what} {directory} holds other files ({', '.join(others[:3])}"
                         f"{', …' if len(others) > 3 else ''}); choose an empty folder or pass --overwrite")
    return directory
