"""The plugin's NIfTI reader and writer (layer data tuples, no viewer) and the manifest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from napari_rverdict._napari.reader import layer_to_xyz, napari_get_reader, xyz_to_layer
from napari_rverdict._napari.writer import write_multiple, write_single_image
from napari_rverdict.data.dwi import save_dwi
from napari_rverdict.data.map_files import load_maps
from napari_rverdict.physics.protocol_files import load_protocol


def _affine():
    a = np.diag([1.25, 1.5, 5.0, 1.0])
    a[:3, 3] = [-40.0, -30.0, 12.5]
    return a


def test_dwi_reader_layout_scale_and_protocol(tmp_path):
    prot = load_protocol("innovate")
    rng = np.random.default_rng(0)
    data = rng.random((6, 5, 4, len(prot))).astype(np.float32)
    save_dwi(data, _affine(), tmp_path / "dwi.nii.gz", prot)
    reader = napari_get_reader(str(tmp_path / "dwi.nii.gz"))
    assert reader is not None
    [(layer, kwargs, kind)] = reader(str(tmp_path / "dwi.nii.gz"))
    assert kind == "image" and layer.shape == (len(prot), 4, 5, 6)  # (volume, z, y, x)
    np.testing.assert_array_equal(layer[3, 2, 1, 0], data[0, 1, 2, 3])
    assert kwargs["scale"] == pytest.approx((1.0, 5.0, 1.5, 1.25))
    assert kwargs["translate"] == pytest.approx((0.0, 12.5, -30.0, -40.0))
    md = kwargs["metadata"]
    np.testing.assert_allclose(md["affine"], _affine())
    assert md["nifti_header"] is not None
    np.testing.assert_allclose(md["protocol"].b, prot.b)


def test_dwi_without_sidecar_opens_with_the_problem_noted(tmp_path):
    img = nib.Nifti1Image(np.ones((3, 3, 2, 7), np.float32), _affine())
    nib.save(img, str(tmp_path / "x.nii.gz"))
    [(layer, kwargs, kind)] = napari_get_reader(str(tmp_path / "x.nii.gz"))(str(tmp_path / "x.nii.gz"))
    assert layer.shape == (7, 2, 3, 3) and kwargs["metadata"]["protocol"] is None
    assert "no protocol" in kwargs["metadata"]["protocol_problem"]


def test_labels_and_map_reader(tmp_path):
    labels = np.zeros((6, 5, 4), np.int16)
    labels[2:4, 1:3, 1] = 3
    nib.save(nib.Nifti1Image(labels, _affine()), str(tmp_path / "labels.nii.gz"))
    [(data, kwargs, kind)] = napari_get_reader(str(tmp_path / "labels.nii.gz"))(str(tmp_path / "labels.nii.gz"))
    assert kind == "labels" and data.shape == (4, 5, 6) and data.dtype == np.int32
    np.testing.assert_array_equal(data, labels.transpose(2, 1, 0))
    r = np.full((6, 5, 4), 7.5, np.float32)
    nib.save(nib.Nifti1Image(r, _affine()), str(tmp_path / "R.nii.gz"))
    [(data, kwargs, kind)] = napari_get_reader(str(tmp_path / "R.nii.gz"))(str(tmp_path / "R.nii.gz"))
    assert kind == "image" and kwargs["name"] == "R [µm]" and kwargs["contrast_limits"] == (0.0, 15.0)


def test_reader_declines_what_it_cannot_read(tmp_path):
    assert napari_get_reader(str(tmp_path / "a.tif")) is None
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    assert napari_get_reader(str(tmp_path / "bad.nii.gz")) is None
    assert napari_get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]) is None


def test_layer_nifti_conversion_is_one_transpose():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(layer_to_xyz(xyz_to_layer(x)), x)
    assert xyz_to_layer(x[..., 0]).shape == (4, 3, 2)
    assert layer_to_xyz(np.zeros((4, 3))).shape == (3, 4, 1)
    with pytest.raises(ValueError, match="5D"):
        layer_to_xyz(np.zeros((1, 1, 1, 1, 1)))


def test_writer_round_trip_keeps_affine_and_values(tmp_path):
    r = np.random.default_rng(1).random((6, 5, 4)).astype(np.float32) * 15
    nib.save(nib.Nifti1Image(r, _affine()), str(tmp_path / "R.nii.gz"))
    [(data, kwargs, _)] = napari_get_reader(str(tmp_path / "R.nii.gz"))(str(tmp_path / "R.nii.gz"))
    out = write_single_image(str(tmp_path / "out" / "R_copy"), data, kwargs)
    assert out[0].endswith("R_copy.nii.gz")
    back = nib.load(out[0])
    np.testing.assert_allclose(back.affine, _affine())
    np.testing.assert_array_equal(np.asarray(back.dataobj), r)
    assert b"R [um]" in back.header["descrip"].tobytes()  # written as a map (name and unit in the header)
    # a layer with no stored affine: one built from its scale and translate
    meta = {"name": "x", "scale": (5.0, 1.5, 1.25), "translate": (12.5, -30.0, -40.0), "metadata": {}}
    out = write_single_image(str(tmp_path / "plain.nii"), xyz_to_layer(r), meta)
    np.testing.assert_allclose(nib.load(out[0]).affine, _affine())
    # File ▸ Save Layers of a non-map layer (drawn labels, a mask) places it as save_labels does: scanner
    # coordinates in qform and sform alike (nibabel alone: sform code 2, qform code 0)
    hdr = nib.load(out[0]).header
    assert int(hdr["qform_code"]) == int(hdr["sform_code"]) == 1
    np.testing.assert_allclose(hdr.get_qform(), _affine(), atol=1e-5)


def test_multi_writer_writes_one_map_per_layer(tmp_path):
    maps = {"f_ic": np.full((6, 5, 4), 0.4, np.float32), "R": np.full((6, 5, 4), 9.0, np.float32)}
    layers = [(xyz_to_layer(v), {"name": f"{k} layer", "metadata": {"affine": _affine(), "map_name": k,
                                                                      "unit": "µm" if k == "R" else ""}}, "image")
              for k, v in maps.items()]
    written = write_multiple(str(tmp_path / "maps"), layers)
    assert sorted(Path(p).name for p in written) == ["R.nii.gz", "f_ic.nii.gz"]
    back = load_maps(tmp_path / "maps")
    for k, v in maps.items():
        np.testing.assert_array_equal(back[k], v)


def test_manifest_is_valid_under_npe2():
    pytest.importorskip("npe2")
    exe = Path(sys.executable).with_name("npe2")
    res = subprocess.run([str(exe), "validate", "napari-rverdict"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in res.stdout
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution("napari-rverdict")
    assert {w.display_name for w in mf.contributions.widgets} == {"Simulate", "Train", "Maps", "Explore"}
    assert {s.key for s in mf.contributions.sample_data} >= {"prostate_phantom"}
    for cmd in mf.contributions.commands:  # every python_name imports
        module, attr = cmd.python_name.split(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr))
