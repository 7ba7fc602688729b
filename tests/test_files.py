"""files.py: atomic writes keep the old file on failure, sets appear whole or not at all, outputs checked early."""

import os
import stat

import numpy as np
import pytest

from napari_rverdict.errors import InputError
from napari_rverdict.files import (
    FileSet,
    atomic_path,
    check_distinct_outputs,
    check_output_dir,
    check_output_file,
    check_output_files,
    write_text,
)


def test_atomic_path_keeps_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "sim.npz"
    np.savez(target, a=np.arange(3))
    before = target.read_bytes()
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError("No space left on device")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.npz"]


def test_atomic_path_keeps_suffixes_and_permissions(tmp_path):
    target = tmp_path / "map.nii.gz"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    new = write_text(tmp_path / "fresh.txt", "x")
    assert stat.S_IMODE(new.stat().st_mode) & 0o044  # not 0600: others may read as with any new file


def test_file_set_is_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    with pytest.raises(OSError):
        with FileSet() as files:
            files.path(a).write_text("new a")
            raise OSError("disk full while writing b")
    assert a.read_text() == "old a" and not b.exists()
    with FileSet() as files:
        files.path(a).write_text("new a")
        files.path(b).write_text("new b")
    assert a.read_text() == "new a" and b.read_text() == "new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_check_output_file(tmp_path):
    (tmp_path / "old.pt").write_bytes(b"x")
    for bad, match in [("", "empty"), (str(tmp_path), "folder"), (str(tmp_path / "old.pt"), "--overwrite")]:
        with pytest.raises(InputError, match=match):
            check_output_file(bad)
    assert check_output_file(tmp_path / "old.pt", overwrite=True) == tmp_path / "old.pt"
    with pytest.raises(InputError, match="input"):
        check_output_file(tmp_path / "old.pt", overwrite=True, inputs=[tmp_path / "old.pt"])
    with pytest.raises(InputError, match="must end with"):
        check_output_file(tmp_path / "sim.dat", suffixes=(".npz",))


def test_check_output_dir(tmp_path):
    (tmp_path / "T1.nii.gz").write_bytes(b"anatomy")
    with pytest.raises(InputError, match="other files"):
        check_output_dir(tmp_path, ["f_ic.nii.gz"])
    with pytest.raises(InputError, match="already holds T1"):
        check_output_dir(tmp_path, ["T1.nii.gz"])
    assert check_output_dir(tmp_path, ["f_ic.nii.gz"], overwrite=True) == tmp_path
    with pytest.raises(InputError, match="input"):
        check_output_dir(tmp_path, ["T1.nii.gz"], overwrite=True, inputs=[tmp_path / "T1.nii.gz"])
    with pytest.raises(InputError, match="leaves the folder"):
        check_output_dir(tmp_path / "new", ["../x.nii.gz"])
    with pytest.raises(InputError, match="empty"):
        check_output_dir("", [])
    assert check_output_dir(tmp_path / "new", ["f_ic.nii.gz"]) == tmp_path / "new"


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs /sys")
def test_writability_is_probed_not_asked_of_os_access():
    """/sys refuses new files even to root, for whom os.access says yes: refused before any work."""
    for out in ("/sys/m.pt", "/sys/new/m.pt"):
        with pytest.raises(InputError, match="cannot write in /sys"):
            check_output_file(out)
    with pytest.raises(InputError, match="cannot write in /sys"):
        check_output_dir("/sys/maps")


def test_probe_leaves_nothing_and_creates_no_folder(tmp_path):
    check_output_file(tmp_path / "new" / "sub" / "m.pt")
    check_output_dir(tmp_path / "maps", ["a.nii.gz"])
    assert list(tmp_path.iterdir()) == []


def test_check_distinct_outputs(tmp_path):
    check_distinct_outputs([("--csv", tmp_path / "a.csv"), ("--plot", tmp_path / "a.png"), ("--x", None)])
    for other in (tmp_path / "a.csv", tmp_path / "sub" / ".." / "a.csv"):
        with pytest.raises(InputError, match="--csv .* and --plot .* are one file"):
            check_distinct_outputs([("--csv", tmp_path / "a.csv"), ("--plot", other)])
    (tmp_path / "a.csv").write_text("x")
    os.link(tmp_path / "a.csv", tmp_path / "b.csv")  # one file under two names
    with pytest.raises(InputError, match="one file"):
        check_distinct_outputs([("--csv", tmp_path / "a.csv"), ("--plot", tmp_path / "b.csv")])


def test_check_output_files_names_every_existing_file_and_says_overwrite_true(tmp_path):
    """The Python API writers' check: one error naming the existing files (a set is refused whole)."""
    new, a, b = tmp_path / "new.csv", tmp_path / "a.csv", tmp_path / "b.csv"
    assert check_output_files([new]) == [new]
    a.write_text("mine")
    with pytest.raises(InputError, match=r"^CSV file .*a\.csv exists; pass overwrite=True to replace it$"):
        check_output_files([new, a], what="CSV file")
    b.write_text("mine too")
    with pytest.raises(InputError, match=r"CSV files .*a\.csv, .*b\.csv exist; pass overwrite=True to replace them"):
        check_output_files([a, new, b], what="CSV file")
    assert check_output_files([a, b], overwrite=True) == [a, b]
    with pytest.raises(InputError, match="is a folder"):  # refused even with overwrite
        check_output_files([tmp_path], overwrite=True)
    assert a.read_text() == "mine" and not new.exists()
