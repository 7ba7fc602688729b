"""The subjects of a cohort: from DWI paths, a folder of DWIs, or a CSV with one row per subject.

A subject is named after its DWI's file stem (``sub-01.nii.gz`` → ``sub-01``); when stems repeat (BIDS-like
``sub-01/dwi.nii.gz``, ``sub-02/dwi.nii.gz``) the parent folders name them instead. A CSV has a ``dwi`` column and
optional ``subject``, ``mask``, ``labels`` and ``protocol`` columns (empty cells = none / the DWI's sidecar);
relative paths are read from the CSV's folder. Every problem found here is bad input (:class:`InputError`), found
before any work starts; a DWI that cannot be read is found by its own task later.
"""

from __future__ import annotations

import csv
import difflib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from napari_rverdict.data.nifti import is_nifti_name, nifti_stem
from napari_rverdict.errors import InputError
from napari_rverdict.files import check_name

CSV_COLUMNS = ("subject", "dwi", "mask", "labels", "protocol")
_EXTRA = "\0extra"  # the reader's key for the cells of a row beyond the header's columns


@dataclass(frozen=True)
class Subject:
    """One subject's inputs: ``name`` (its output folder), the DWI, and optional mask, labels and protocol (a
    preset name or protocol file; None = the DWI's sidecar)."""

    name: str
    dwi: Path
    mask: Path | None = None
    labels: Path | None = None
    protocol: str | None = None


def _is_nifti(path: Path) -> bool:
    return path.is_file() and is_nifti_name(path) and not path.name.startswith(".")


def _is_volume_series(path: Path) -> bool:
    """False for a NIfTI whose header says it is one volume (a mask, a label image, a map: 3D or x × y × z × 1);
    True for a series of volumes and for a file whose header cannot be read (its task reports why)."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).header.get_data_shape()
    except Exception:  # noqa: BLE001 - unreadable here: left to the subject's own task, which says why
        return True
    return len(shape) >= 4 and shape[3] > 1


def _optional_path(text: str | None, base: Path, column: str, row: int) -> Path | None:
    if text is None or not text.strip():
        return None
    p = Path(text.strip())
    p = p if p.is_absolute() else base / p
    if not p.exists():
        raise InputError(f"cohort CSV row {row}: {column} file not found: {p}")
    return p


def _from_csv(path: Path) -> list[tuple[str | None, Path, Path | None, Path | None, str | None]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the cohort CSV {path}: {exc}") from None
    header = next((line for line in text.splitlines() if line.strip()), "")
    # a spreadsheet's export in a comma-decimal locale separates by ';' (or a tab): its header names no column
    # with a comma, so the separator is the one the header holds
    delimiter = next((d for d in ",;\t" if d in header), ",")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, restkey=_EXTRA)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        rows = list(reader)
    except csv.Error as exc:
        raise InputError(f"cannot read the cohort CSV {path}: {exc}") from None
    if "dwi" not in columns:
        raise InputError(f"the cohort CSV {path.name} needs a 'dwi' column (optional: subject, mask, labels, "
                         f"protocol); it has {', '.join(columns) or 'none'}")
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    absent = [c for c in CSV_COLUMNS if c not in columns]  # subject_id beside subject is a column of its own
    typos = {c: close[0] for c in unknown if (close := difflib.get_close_matches(c, absent, n=1, cutoff=0.75))}
    if typos:  # 'labesl' would leave every label image out without a word
        raise InputError(f"the cohort CSV {path.name} has the column(s) "
                         f"{', '.join(f'{c} (did you mean {m}?)' for c, m in typos.items())}; "
                         f"its columns are {', '.join(CSV_COLUMNS)}")
    if unknown:  # a trial's spreadsheet has more (age, site, …): read past them, and say so
        warnings.warn(f"the cohort CSV {path.name}: column(s) {', '.join(unknown)} not used (this reads "
                      f"{', '.join(CSV_COLUMNS)})", stacklevel=4)
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:  # the reader keeps the last one's cells: the other column's paths were dropped without a word
        raise InputError(f"the cohort CSV {path.name} has the column(s) {', '.join(twice)} twice")
    base, out = path.parent, []
    for i, raw in enumerate(rows, start=2):  # row 1 is the header (a blank line before a row: counted as one)
        extra = [v for v in raw.get(_EXTRA) or [] if v.strip()]
        if extra:  # e.g. a path with an unquoted separator: its cut-off rest was dropped without a word
            raise InputError(f"cohort CSV row {i} has more cells than the header has columns ({extra[0]!r} …); "
                             "quote cells that hold the separator")
        row = {str(k).strip().lower(): (v or "") for k, v in raw.items() if k is not None and k != _EXTRA}
        if not any(v.strip() for v in row.values()):
            continue
        dwi = _optional_path(row.get("dwi"), base, "dwi", i)
        if dwi is None:
            raise InputError(f"cohort CSV row {i}: the dwi cell is empty")
        protocol = row.get("protocol", "").strip() or None
        if protocol is not None and not Path(protocol).is_absolute() and (base / protocol).exists():
            protocol = str(base / protocol)
        out.append((row.get("subject", "").strip() or None, dwi, _optional_path(row.get("mask"), base, "mask", i),
                    _optional_path(row.get("labels"), base, "labels", i), protocol))
    return out


def _expand(items) -> list[tuple[str | None, Path, Path | None, Path | None, str | None]]:
    entries = []
    for item in items:
        p = Path(item)
        if p.is_dir():  # its 4D images: masks, label images and maps beside the DWIs are no subjects
            images = sorted(q for q in p.iterdir() if _is_nifti(q))
            found = [q for q in images if _is_volume_series(q)]
            if not found:
                single = f" (only single-volume images: {', '.join(q.name for q in images[:3])}" \
                    f"{', …' if len(images) > 3 else ''})" if images else ""
                raise InputError(f"no DWI (4D .nii / .nii.gz) in the folder {p}{single}")
            entries += [(None, q, None, None, None) for q in found]
        elif p.suffix.lower() == ".csv":
            if not p.is_file():
                raise InputError(f"cohort CSV not found: {p}")
            entries += _from_csv(p)
        elif is_nifti_name(p):
            if not p.is_file():
                raise InputError(f"DWI not found: {p}")
            entries.append((None, p, None, None, None))
        else:
            raise InputError(f"{p} is neither a DWI (.nii / .nii.gz), a folder of DWIs nor a cohort CSV")
    return entries


def read_subjects(items, protocol: str | None = None) -> list[Subject]:
    """The subjects named by ``items`` (DWI paths, folders of DWIs, cohort CSVs, mixed), in the order given.

    ``protocol`` is the protocol of subjects that name none (None: each DWI's sidecar). Names must be unique and
    plain (they become folders); the same DWI listed twice is refused.
    """
    if isinstance(items, (str, Path)):
        items = [items]
    entries = _expand(list(items))
    if not entries:
        raise InputError("the cohort is empty: give DWI files, a folder of DWIs or a cohort CSV")
    seen_dwi: dict[Path, int] = {}
    for k, e in enumerate(entries):
        key = e[1].resolve()
        if key in seen_dwi:
            raise InputError(f"the DWI {e[1]} is listed twice")
        seen_dwi[key] = k
    names = [e[0] or nifti_stem(e[1]) for e in entries]
    if twice := {n.casefold() for n in _repeated(names)}:  # stems repeat (case aside): name by the parent folder
        names = [e[0] or (e[1].resolve().parent.name if nifti_stem(e[1]).casefold() in twice else nifti_stem(e[1]))
                 for e in entries]
    repeated = _repeated(names)
    if repeated:
        raise InputError(f"subject name(s) {', '.join(sorted(repeated))} repeat (case aside); name the subjects "
                         "in a CSV 'subject' column")
    hidden = [n for n in names if n.startswith(".")]
    if hidden:  # a hidden folder: left out of listings, and of the check of --out for other files
        raise InputError(f"subject name '{hidden[0]}' starts with '.'; name the subject in a CSV 'subject' column")
    def absolute(p):  # workers may run elsewhere (another folder, another machine sharing the file system)
        return None if p is None else Path(p).absolute()

    if protocol is not None and Path(str(protocol)).exists():  # a protocol file rather than a preset name
        protocol = str(absolute(protocol))

    subjects = [Subject(check_name(n, "subject name"), absolute(dwi), absolute(mask), absolute(labels),
                        prot if prot is not None else protocol)
                for n, (_, dwi, mask, labels, prot) in zip(names, entries)]
    _check_protocols(subjects)
    return subjects


def _check_protocols(subjects: list[Subject]) -> None:
    """Each protocol named (a preset or a file) read once now: a missing or unreadable protocol file is bad input
    found before any work, not one subject's failure later (the DWIs' own sidecars are read by their tasks)."""
    from napari_rverdict.physics.protocol_files import load_protocol

    checked: set[str] = set()
    for s in subjects:
        if s.protocol is None or s.protocol in checked:
            continue
        try:
            load_protocol(s.protocol)
        except (InputError, OSError) as exc:
            raise InputError(f"subject {s.name}: protocol {s.protocol}: {' '.join(str(exc).split())}") from None
        checked.add(s.protocol)


def _repeated(names: list[str]) -> set[str]:
    """The names given more than once, ignoring case: ``Sub-01`` and ``sub-01`` are one folder on the case-insensitive
    file systems of macOS and Windows (one subject's maps and record would replace the other's)."""
    folded = [n.casefold() for n in names]
    return {n for n, f in zip(names, folded) if folded.count(f) > 1}

