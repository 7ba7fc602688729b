"""NIfTI I/O: DWIs with every protocol sidecar variant, maps, labels, masks, and the errors they raise."""

import json

import nibabel as nib
import numpy as np
import pytest

from napari_rverdict.data.dwi import Dwi, find_sidecar, load_dwi, load_dwi_as_named, save_dwi
from napari_rverdict.data.label_files import load_labels, load_mask, save_labels
from napari_rverdict.data.map_files import load_maps, map_descrip, parse_descrip, save_map, save_maps
from napari_rverdict.data.nifti import ascii_unit
from napari_rverdict.physics.protocol import Protocol
from napari_rverdict.physics.protocol_files import write_scheme

AFFINE = np.array([[-1.25, 0.02, 0.0, 40.0], [0.0, 1.25, 0.1, -30.5], [0.0, 0.0, 5.0, 12.25], [0, 0, 0, 1.0]])


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return (rng.uniform(10, 1000, (5, 4, 3, 20))).astype(np.float32)


def _close(p, q):
    for k in ("b", "small_delta", "big_delta", "te", "tr"):
        np.testing.assert_allclose(getattr(p, k), getattr(q, k), rtol=1e-5, atol=1e-3, err_msg=k)


def test_dwi_round_trip_keeps_affine_data_and_protocol(tmp_path, data):
    prot = Protocol.innovate(direction_averaged=False)
    written = save_dwi(data, AFFINE, tmp_path / "dwi.nii.gz", prot)
    assert {p.name for p in written} >= {"dwi.nii.gz", "dwi.bval", "dwi.bvec", "dwi.delta", "dwi.smalldel",
                                         "dwi.te", "dwi.tr"}
    dwi = load_dwi(tmp_path / "dwi.nii.gz")
    assert dwi._data is None  # lazy: nothing read yet
    assert dwi.shape == (5, 4, 3, 20) and dwi.spatial_shape == (5, 4, 3) and dwi.n_volumes == 20
    np.testing.assert_allclose(dwi.affine, AFFINE, atol=1e-5)
    np.testing.assert_allclose(dwi.voxel_sizes, np.sqrt((AFFINE[:3, :3] ** 2).sum(0)), rtol=1e-5)
    np.testing.assert_allclose(dwi.volume(3), data[..., 3])
    assert dwi._data is None  # one volume read alone
    np.testing.assert_array_equal(dwi.data, data)
    _close(dwi.protocol, prot)
    assert "protocol read from dwi.bval" in dwi.notes
    np.testing.assert_allclose(dwi.b0(), data[..., prot.is_b0].mean(-1), rtol=1e-6)
    avg = load_dwi(tmp_path / "dwi.nii.gz", direction_averaged=True)
    assert avg.n_volumes == 10 and not avg.is_direction_resolved and dwi.is_direction_resolved
    np.testing.assert_allclose(avg.data[..., 1], data[..., 1:4].mean(-1), rtol=1e-6)
    _close(avg.protocol, Protocol.innovate())
    assert any("20 → 10" in n for n in avg.notes)


def test_sidecar_scheme_with_tr(tmp_path, data):
    prot = Protocol.innovate(direction_averaged=False)
    nib.save(nib.Nifti1Image(data, AFFINE), str(tmp_path / "dwi.nii.gz"))
    paths = write_scheme(prot, tmp_path / "dwi.scheme")
    assert [p.name for p in paths] == ["dwi.scheme", "dwi.tr"]
    assert find_sidecar(tmp_path / "dwi.nii.gz").name == "dwi.scheme"
    _close(load_dwi(tmp_path / "dwi.nii.gz").protocol, prot)
    # TR given on the command line instead of the .tr file
    (tmp_path / "dwi.tr").unlink()
    dwi = load_dwi(tmp_path / "dwi.nii.gz", tr=3000.0)
    np.testing.assert_allclose(dwi.protocol.tr, 3000.0)


def test_sidecar_bval_bvec_json(tmp_path, data):
    prot = Protocol.innovate(direction_averaged=False)
    nib.save(nib.Nifti1Image(data, AFFINE), str(tmp_path / "dwi.nii.gz"))
    (tmp_path / "dwi.bval").write_text(" ".join(f"{b:g}" for b in prot.b))
    (tmp_path / "dwi.bvec").write_text("\n".join(" ".join(f"{v:.6f}" for v in prot.directions[:, i])
                                                 for i in range(3)))
    (tmp_path / "dwi.json").write_text(json.dumps({
        "PulseDuration": list(prot.small_delta * 1e-3), "PulseSeparation": list(prot.big_delta * 1e-3),
        "EchoTime": list(prot.te * 1e-3), "RepetitionTime": list(prot.tr * 1e-3)}))
    dwi = load_dwi(tmp_path / "dwi.nii.gz")
    _close(dwi.protocol, prot)
    np.testing.assert_allclose(dwi.protocol.directions, prot.directions, atol=1e-6)
    # the same in ms, with one TE for every volume given as a number
    (tmp_path / "dwi.json").write_text(json.dumps({
        "units": "ms", "smalldel": list(prot.small_delta), "delta": list(prot.big_delta), "te": 80.0,
        "tr": list(prot.tr)}))
    np.testing.assert_allclose(load_dwi(tmp_path / "dwi.nii.gz").protocol.te, 80.0)


def test_sidecar_bval_with_per_volume_files(tmp_path, data):
    prot = Protocol.innovate(direction_averaged=False)
    save_dwi(data, AFFINE, tmp_path / "dwi.nii.gz", prot)
    (tmp_path / "dwi.bvec").unlink()  # directions are optional
    dwi = load_dwi(tmp_path / "dwi.nii.gz")
    _close(dwi.protocol, prot)
    # a file with the wrong number of values is refused
    (tmp_path / "dwi.te").write_text("0.05 0.05 0.05")
    with pytest.raises(ValueError, match="te|TE"):
        load_dwi(tmp_path / "dwi.nii.gz")


def test_preset_and_file_protocols(tmp_path, data):
    nib.save(nib.Nifti1Image(data, AFFINE), str(tmp_path / "x.nii.gz"))
    dwi = load_dwi(tmp_path / "x.nii.gz", "innovate-20")
    _close(dwi.protocol, Protocol.innovate(direction_averaged=False))
    write_scheme(Protocol.innovate(direction_averaged=False), tmp_path / "other.scheme")
    _close(load_dwi(tmp_path / "x.nii.gz", tmp_path / "other.scheme").protocol,
           Protocol.innovate(direction_averaged=False))


def test_innovate_as_named_means_the_acquisition_on_20_volumes(tmp_path, data):
    """'innovate' names INNOVATE's 10 direction-averaged measurements; on a 20-volume DWI a person naming it means
    the 20-volume acquisition (as rverdict predict / fit and cohorts read it). load_dwi itself stays strict."""
    nib.save(nib.Nifti1Image(data, AFFINE), str(tmp_path / "d20.nii.gz"))
    nib.save(nib.Nifti1Image(data[:, :, :, None, :], AFFINE), str(tmp_path / "d20x1.nii.gz"))
    nib.save(nib.Nifti1Image(data[..., :10], AFFINE), str(tmp_path / "d10.nii.gz"))
    nib.save(nib.Nifti1Image(data[..., :13], AFFINE), str(tmp_path / "d13.nii.gz"))
    acquired, averaged = Protocol.innovate(direction_averaged=False), Protocol.innovate(direction_averaged=True)
    for name in ("d20.nii.gz", "d20x1.nii.gz"):
        for spec in ("innovate", " INNOVATE ", "innovate-20"):
            dwi = load_dwi_as_named(tmp_path / name, spec)
            assert dwi.n_volumes == len(dwi.protocol) == 20
            _close(dwi.protocol, acquired)
    np.testing.assert_allclose(load_dwi_as_named(tmp_path / "d20.nii.gz", "innovate", tr=3000.0).protocol.tr, 3000.0)
    _close(load_dwi_as_named(tmp_path / "d10.nii.gz", "innovate").protocol, averaged)
    with pytest.raises(ValueError, match="13 volumes but its protocol .* has 10 measurements"):
        load_dwi_as_named(tmp_path / "d13.nii.gz", "innovate")
    with pytest.raises(ValueError, match="10 volumes but its protocol .* has 20 measurements"):
        load_dwi_as_named(tmp_path / "d10.nii.gz", "innovate-20")
    with pytest.raises(ValueError, match="20 volumes but its protocol .* has 10 measurements"):
        load_dwi(tmp_path / "d20.nii.gz", "innovate")


def test_dwi_errors(tmp_path, data):
    nib.save(nib.Nifti1Image(data, AFFINE), str(tmp_path / "dwi.nii.gz"))
    with pytest.raises(ValueError, match="no protocol found for dwi.nii.gz"):
        load_dwi(tmp_path / "dwi.nii.gz")
    with pytest.raises(ValueError, match="20 volumes but its protocol .* has 10 measurements"):
        load_dwi(tmp_path / "dwi.nii.gz", "innovate")
    nib.save(nib.Nifti1Image(data[..., 0], AFFINE), str(tmp_path / "b0.nii.gz"))
    with pytest.raises(ValueError, match="must be 4D .* got 3D"):
        load_dwi(tmp_path / "b0.nii.gz", "innovate")
    with pytest.raises(ValueError, match="not found"):
        load_dwi(tmp_path / "missing.nii.gz", "innovate")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable NIfTI"):
        load_dwi(tmp_path / "junk.nii.gz", "innovate")
    with pytest.raises(ValueError, match="4D"):
        Dwi.from_array(data[..., 0], AFFINE, "innovate")
    with pytest.raises(ValueError, match="volumes but its protocol"):
        Dwi.from_array(data[..., :7], AFFINE, "innovate")
    # (x, y, z, 1, n) as some converters write is accepted
    nib.save(nib.Nifti1Image(data[:, :, :, None, :], AFFINE), str(tmp_path / "five.nii.gz"))
    assert load_dwi(tmp_path / "five.nii.gz", "innovate-20").shape == (5, 4, 3, 20)


def test_maps_round_trip_with_units(tmp_path):
    rng = np.random.default_rng(1)
    maps = {"f_ic": rng.random((5, 4, 3)), "cellularity": rng.random((5, 4, 3)) * 1e-3,
            "D_ees": rng.random((5, 4, 3)) * 3}
    paths = save_maps(maps, tmp_path / "maps", AFFINE, model="rverdict")
    assert [p.name for p in paths] == ["f_ic.nii.gz", "cellularity.nii.gz", "D_ees.nii.gz"]
    img = nib.load(str(paths[1]))
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
    assert parse_descrip(img.header["descrip"].tobytes()) == ("cellularity", "um^-3")
    assert float(img.header["cal_max"]) == pytest.approx(0.01)
    back, units = load_maps(tmp_path / "maps", with_units=True)
    assert set(back) == set(maps) and units["D_ees"] == "um^2/ms" and units["f_ic"] == ""
    for k in maps:
        np.testing.assert_allclose(back[k], maps[k].astype(np.float32))
    # files written by other tools: named after the file
    (tmp_path / "other").mkdir()
    nib.save(nib.Nifti1Image(np.ones((5, 4, 3), np.float32), AFFINE), str(tmp_path / "other" / "fic.nii"))
    assert list(load_maps(tmp_path / "other")) == ["fic"]
    with pytest.raises(ValueError, match="3D"):
        save_map(np.ones((2, 2)), tmp_path / "x.nii.gz", AFFINE, "x")
    with pytest.raises(ValueError, match="no 3D NIfTI maps"):
        load_maps(tmp_path)  # holds only folders
    with pytest.raises(ValueError, match="not a directory"):
        load_maps(tmp_path / "nope")


def test_descrip_helpers():
    assert ascii_unit("µm²/ms") == "um^2/ms" and ascii_unit("µm⁻³") == "um^-3"
    d = map_descrip("T1", "ms")
    assert d == b"napari-rverdict map T1 [ms]" and parse_descrip(d) == ("T1", "ms")
    assert parse_descrip(b"something else") is None
    assert len(map_descrip("x" * 200, "ms")) <= 79


def test_labels_and_masks_on_the_dwi_grid(tmp_path, data):
    dwi = Dwi.from_array(data, AFFINE, "innovate-20")
    labels = np.zeros((5, 4, 3), int)
    labels[1:3, 1:3, 1] = 3
    labels[4, 0, 0] = 1
    save_labels(labels, tmp_path / "lab.nii.gz", AFFINE)
    got = load_labels(tmp_path / "lab.nii.gz", dwi)
    assert got.dtype == np.int32 and np.array_equal(got, labels)
    assert np.array_equal(load_mask(tmp_path / "lab.nii.gz", dwi), labels > 0)
    assert np.array_equal(load_labels(tmp_path / "lab.nii.gz", ((5, 4, 3), AFFINE)), labels)
    # another affine (a 2 mm shift) or another shape: refused with a clear message
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    save_labels(labels, tmp_path / "shift.nii.gz", shifted)
    with pytest.raises(ValueError, match="label image shift.nii.gz is on a different grid"):
        load_labels(tmp_path / "shift.nii.gz", dwi)
    with pytest.raises(ValueError, match="mask shift.nii.gz is on a different grid"):
        load_mask(tmp_path / "shift.nii.gz", dwi)
    save_labels(labels[:4], tmp_path / "small.nii.gz", AFFINE)
    with pytest.raises(ValueError, match=r"has shape \(4, 4, 3\) but .* spatial shape \(5, 4, 3\)"):
        load_labels(tmp_path / "small.nii.gz", dwi)
    nib.save(nib.Nifti1Image(labels * 0.5, AFFINE), str(tmp_path / "frac.nii.gz"))
    with pytest.raises(ValueError, match="non-integer"):
        load_labels(tmp_path / "frac.nii.gz", dwi)
    with pytest.raises(ValueError, match="not found"):
        load_labels(tmp_path / "none.nii.gz", dwi)


def test_save_maps_is_one_set_and_names_stay_in_the_folder(tmp_path):
    import pytest as _pytest

    from napari_rverdict.data.map_files import save_maps
    from napari_rverdict.errors import InputError

    good = np.ones((2, 2, 2), np.float32)
    with _pytest.raises(InputError, match="leave"):
        save_maps({"a": good, "../evil": good}, tmp_path / "out", np.eye(4))
    assert not (tmp_path / "evil.nii.gz").exists() and not (tmp_path / "out").exists()
    with _pytest.raises(InputError, match="3D"):
        save_maps({"a": good, "b": np.ones((2, 2), np.float32)}, tmp_path / "out", np.eye(4))  # b is not 3D
    assert not (tmp_path / "out" / "a.nii.gz").exists()  # whole or not at all
    assert [p.name for p in save_maps({"a": good}, tmp_path / "out", np.eye(4))] == ["a.nii.gz"]


def test_writers_refuse_a_bad_affine_or_target_before_touching_the_disk(tmp_path):
    """A NaN or 3 × 3 affine was nibabel's traceback, a file where the folder goes a FileExistsError, a folder
    where the bundle goes an IsADirectoryError, and a map that is not 3D left the new, empty output folder."""
    import pytest as _pytest

    from napari_rverdict.data.dwi import load_dwi
    from napari_rverdict.data.map_files import save_map, save_maps
    from napari_rverdict.data.synth import simulate
    from napari_rverdict.errors import InputError
    from napari_rverdict.learn.config import TrainConfig
    from napari_rverdict.learn.train import train

    good = np.ones((2, 2, 2), np.float32)
    for affine, match in ((np.full((4, 4), np.nan), "NaN"), (np.eye(3), "4 × 4"), (None, "4 × 4")):
        with _pytest.raises(InputError, match=match):
            save_maps({"a": good}, tmp_path / "out", affine)
        with _pytest.raises(InputError, match=match):
            save_map(good, tmp_path / "a.nii.gz", affine, "a")
    with _pytest.raises(InputError, match="3D"):
        save_maps({"a": good, "b": good[0]}, tmp_path / "out", np.eye(4))
    (tmp_path / "file").write_text("keep")
    with _pytest.raises(InputError, match="is a file, not a folder"):
        save_maps({"a": good}, tmp_path / "file", np.eye(4))
    assert (tmp_path / "file").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    bundle = train(simulate("verdict", n=200, seed=0), TrainConfig(epochs=1, device="cpu")).bundle
    (tmp_path / "models").mkdir()
    with _pytest.raises(InputError, match="is a folder"):
        bundle.save(tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []
    # the INNOVATE preset named for a 20-volume DWI says which one fits
    save_dwi(np.ones((2, 2, 2, 20), np.float32), np.eye(4), tmp_path / "dwi.nii.gz")
    with _pytest.raises(InputError, match="give protocol 'innovate-20'"):
        load_dwi(tmp_path / "dwi.nii.gz", "innovate")


def test_sidecars_belong_to_the_full_stem(tmp_path):
    """Issue 11: dwi.sorted.nii.gz must never read dwi.bval / dwi.delta."""
    import pytest as _pytest

    from napari_rverdict.data.dwi import find_sidecar, load_dwi, save_dwi
    from napari_rverdict.errors import InputError
    from napari_rverdict.physics.protocol import Protocol
    from napari_rverdict.physics.protocol_files import load_protocol, write_fsl

    prot = Protocol.innovate(direction_averaged=False)
    data = np.ones((2, 2, 1, len(prot)), np.float32)
    written = save_dwi(data, np.eye(4), tmp_path / "dwi.nii.gz", prot)
    assert {p.name for p in written} >= {"dwi.nii.gz", "dwi.bval", "dwi.delta"}
    sorted_path = tmp_path / "dwi.sorted.nii.gz"
    (tmp_path / "dwi.nii.gz").rename(sorted_path)
    assert find_sidecar(sorted_path) is None
    with _pytest.raises(InputError):
        load_dwi(sorted_path)
    written = write_fsl(prot, tmp_path / "dwi.sorted")
    assert {p.name for p in written} >= {"dwi.sorted.bval", "dwi.sorted.delta", "dwi.sorted.smalldel"}
    assert find_sidecar(sorted_path).name == "dwi.sorted.bval"
    assert len(load_dwi(sorted_path).protocol) == len(prot)
    # --protocol x.bval takes its timings from x.* only, not from a shorter stem
    x = tmp_path / "x.v2"
    (tmp_path / "x.v2.bval").write_text((tmp_path / "dwi.sorted.bval").read_text())
    for f in ("delta", "smalldel", "te"):
        (tmp_path / f"x.{f}").write_text((tmp_path / f"dwi.sorted.{f}").read_text())
    with _pytest.raises(InputError, match="timings"):
        load_protocol(str(x) + ".bval")


def test_dcm2niix_json_beside_per_volume_files_keeps_them(tmp_path, data):
    prot = Protocol.innovate(direction_averaged=False)
    save_dwi(data, AFFINE, tmp_path / "dwi.nii.gz", prot)  # .bval .bvec .delta .smalldel .te .tr
    (tmp_path / "dwi.json").write_text(json.dumps({"EchoTime": 0.08, "RepetitionTime": 3.349}))  # one series'
    with pytest.warns(UserWarning, match="dwi.json and dwi.te disagree on TE"):
        dwi = load_dwi(tmp_path / "dwi.nii.gz")  # δ and Δ are not in the JSON: they come from the text files
    _close(dwi.protocol, prot)


def _files(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("writer", ["save_map", "save_labels"])
def test_single_file_nifti_writers_refuse_an_existing_file_unless_overwrite(tmp_path, writer):
    from napari_rverdict.errors import InputError

    good = np.ones((2, 2, 2), np.float32)

    def write(**kw):
        if writer == "save_map":
            return save_map(good, tmp_path / "a.nii.gz", AFFINE, "a", **kw)
        return save_labels(good, tmp_path / "a.nii.gz", AFFINE, **kw)

    (tmp_path / "a.nii.gz").write_bytes(b"the user's file")
    with pytest.raises(InputError, match=r"a\.nii\.gz exists; pass overwrite=True to replace it"):
        write()
    assert _files(tmp_path) == {"a.nii.gz": b"the user's file"}  # untouched, no temporary file left
    write(overwrite=True)
    assert nib.load(tmp_path / "a.nii.gz").shape == (2, 2, 2) and list(_files(tmp_path)) == ["a.nii.gz"]


def test_save_maps_refuses_existing_maps_before_writing_any(tmp_path):
    from napari_rverdict.errors import InputError

    out = tmp_path / "maps"
    out.mkdir()
    (out / "notes.txt").write_text("not a map")  # other files in the folder are no clash
    (out / "b.nii.gz").write_bytes(b"old b")
    (out / "c.nii.gz").write_bytes(b"old c")
    before = _files(out)
    maps = {k: np.full((2, 2, 2), i, np.float32) for i, k in enumerate("abc")}
    with pytest.raises(InputError, match=r"map files .*b\.nii\.gz, .*c\.nii\.gz exist; pass overwrite=True"):
        save_maps(maps, out, AFFINE)
    assert _files(out) == before  # a.nii.gz not written either: the set is refused whole
    assert [p.name for p in save_maps({"a": maps["a"]}, out, AFFINE)] == ["a.nii.gz"]  # a new map beside them
    save_maps(maps, out, AFFINE, overwrite=True)
    assert _files(out)["notes.txt"] == b"not a map"
    for i, k in enumerate("abc"):
        assert np.asarray(nib.load(out / f"{k}.nii.gz").dataobj).max() == i


def test_save_dwi_refuses_when_one_sidecar_exists_and_writes_nothing(tmp_path, data):
    from napari_rverdict.errors import InputError

    prot = Protocol.innovate(direction_averaged=False)
    (tmp_path / "dwi.te").write_text("0.05\n")
    with pytest.raises(InputError, match=r"dwi\.te exists; pass overwrite=True"):
        save_dwi(data, AFFINE, tmp_path / "dwi.nii.gz", prot)
    assert _files(tmp_path) == {"dwi.te": b"0.05\n"}  # neither the NIfTI nor the other sidecars
    written = save_dwi(data, AFFINE, tmp_path / "dwi.nii.gz", prot, overwrite=True)
    assert {p.name for p in written} == set(_files(tmp_path)) and (tmp_path / "dwi.te").read_bytes() != b"0.05\n"
    _close(load_dwi(tmp_path / "dwi.nii.gz").protocol, prot)


def test_written_images_carry_the_affine_as_scanner_coordinates_in_qform_and_sform(tmp_path):
    """Maps, labels and DWIs are written with qform and sform both = the DWI's affine, code 1 (scanner): nibabel by
    itself writes sform code 2 and qform code 0, and tools that read the qform place such a map elsewhere."""
    c, s = np.cos(0.2), np.sin(0.2)  # oblique and flipped, as a scanner export may be
    affine = np.array([[-1.25 * c, -1.25 * s, 0, 40], [1.25 * s, -1.25 * c, 0, -20], [0, 0, 3, 7], [0, 0, 0, 1]])
    written = [save_map(np.ones((4, 4, 2)), tmp_path / "f_ic.nii.gz", affine, "f_ic", "fraction"),
               save_labels(np.ones((4, 4, 2), int), tmp_path / "labels.nii.gz", affine),
               save_dwi(np.ones((4, 4, 2, 3)), affine, tmp_path / "dwi.nii.gz")[0]]
    for path in written:
        hdr = nib.load(str(path)).header
        assert int(hdr["qform_code"]) == int(hdr["sform_code"]) == 1, path.name
        np.testing.assert_allclose(hdr.get_qform(), affine, atol=1e-5)
        np.testing.assert_allclose(hdr.get_sform(), affine, atol=1e-5)


def test_one_rule_for_nifti_names(tmp_path):
    """The reader, the writer, map folders and cohort subjects name NIfTI files by one rule (four copies before,
    one of them case-sensitive: a folder's SUB-01.NII.GZ was no subject at all)."""
    from napari_rverdict.cohort.subjects import read_subjects
    from napari_rverdict.data.nifti import is_nifti_name, nifti_stem

    assert [nifti_stem(n) for n in ("/a/sub-01.nii.gz", "SUB-01.NII.GZ", "b.nii", "c.txt")] == \
        ["sub-01", "SUB-01", "b", "c"]
    assert is_nifti_name("X.Nii.Gz") and is_nifti_name("y.nii") and not is_nifti_name("z.nii.bak")
    save_dwi(np.ones((4, 4, 2, 10)), np.eye(4), tmp_path / "dwis" / "SUB-01.NII.GZ")
    assert [s.name for s in read_subjects([tmp_path / "dwis"])] == ["SUB-01"]
    save_map(np.ones((4, 4, 2)), tmp_path / "maps" / "F_IC.NII.GZ", np.eye(4), "f_ic", "fraction")
    assert list(load_maps(tmp_path / "maps")) == ["f_ic"]  # found (named by its header)
