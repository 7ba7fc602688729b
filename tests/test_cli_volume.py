"""`rverdict phantom | predict | fit | compare` end to end on a tiny phantom, and their one-line errors."""

import csv

import nibabel as nib
import numpy as np
import pytest
from napari_rverdict.cli import main

from napari_rverdict.data.label_files import save_labels
from napari_rverdict.data.map_files import load_maps
from napari_rverdict.data.synth import simulate
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    assert main(["phantom", "--out", str(d / "ph"), "--shape", "16", "16", "2", "--snr", "35", "--seed", "1"]) == 0
    data = simulate("rverdict", n=3000, seed=3)
    train(data, TrainConfig(epochs=2, seed=0, device="cpu")).bundle.save(d / "m.pt")
    return d


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def test_phantom_files(workdir):
    ph = workdir / "ph"
    for name in ("dwi.nii.gz", "dwi.bval", "dwi.bvec", "dwi.delta", "dwi.smalldel", "dwi.te", "dwi.tr",
                 "labels.nii.gz", "mask.nii.gz", "phantom.json"):
        assert (ph / name).exists(), name
    img = nib.load(str(ph / "dwi.nii.gz"))
    assert img.shape == (16, 16, 2, 20)
    truth = load_maps(ph / "truth")
    assert "f_ic" in truth and truth["f_ic"].shape == (16, 16, 2)


def test_predict_fit_compare_end_to_end(workdir, capsys):
    ph, out = workdir / "ph", workdir
    assert main(["predict", str(workdir / "m.pt"), str(ph / "dwi.nii.gz"), "--mask", str(ph / "mask.nii.gz"),
                 "--out", str(out / "net"), "--quiet"]) == 0
    assert "wrote 10 maps" in capsys.readouterr().out  # 9 maps and fit_nrmse
    net = load_maps(out / "net")
    mask = np.asarray(nib.load(str(ph / "mask.nii.gz")).dataobj) != 0
    assert set(net) >= {"f_ic", "f_ees", "f_vasc", "R", "cellularity", "T1"}
    assert np.all(np.isnan(net["f_ic"][~mask])) and np.all(net["f_ic"][mask] > 0)
    np.testing.assert_allclose(nib.load(str(out / "net" / "f_ic.nii.gz")).affine,
                               nib.load(str(ph / "dwi.nii.gz")).affine)
    # the preset name works for the 20-volume file too
    assert main(["predict", str(workdir / "m.pt"), str(ph / "dwi.nii.gz"), "--protocol", "innovate",
                 "--out", str(out / "net2"), "--quiet"]) == 0
    assert main(["fit", str(ph / "dwi.nii.gz"), "--mask", str(ph / "mask.nii.gz"), "--device", "cpu",
                 "--starts", "2", "--init", str(workdir / "m.pt"), "--out", str(out / "nlls"), "--quiet"]) == 0
    nlls = load_maps(out / "nlls")
    assert np.all(np.isnan(nlls["T1"][~mask])) and np.all((nlls["T1"][mask] >= 10) & (nlls["T1"][mask] <= 4000))
    capsys.readouterr()
    assert main(["compare", str(out / "net"), str(ph / "truth"), "--labels", str(ph / "labels.nii.gz"),
                 "--csv", str(out / "cmp.csv"), "--roi-csv", str(out / "roi.csv")]) == 0
    text = capsys.readouterr().out
    assert "lesion (PZ)" in text and "MAPE" in text and "ROI statistics" in text
    rows = list(csv.DictReader(open(out / "cmp.csv")))
    f_ic_all = [r for r in rows if r["map"] == "f_ic" and r["region"] == "all"][0]
    expected = np.mean(np.abs(net["f_ic"][mask].astype(float) - load_maps(ph / "truth")["f_ic"][mask]))
    assert float(f_ic_all["mape"]) == pytest.approx(expected, rel=1e-4)  # fractions: range 0–1
    assert int(f_ic_all["n"]) == int(mask.sum())
    assert (out / "roi_net.csv").exists() and (out / "roi_truth.csv").exists()


def test_one_line_errors(workdir, tmp_path, capsys):
    ph = workdir / "ph"
    img = nib.load(str(ph / "dwi.nii.gz"))
    # 3D DWI
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), str(tmp_path / "b0.nii.gz"))
    assert main(["predict", str(workdir / "m.pt"), str(tmp_path / "b0.nii.gz"), "--protocol", "innovate",
                 "--out", str(tmp_path / "o")]) == 2
    assert "4D" in _err(capsys)
    # volume count differs from the protocol
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :13], img.affine), str(tmp_path / "d13.nii.gz"))
    assert main(["fit", str(tmp_path / "d13.nii.gz"), "--protocol", "innovate-20", "--out", str(tmp_path / "o")]) == 2
    assert "13 volumes but its protocol" in _err(capsys)
    # no sidecar and no protocol
    assert main(["fit", str(tmp_path / "d13.nii.gz"), "--out", str(tmp_path / "o")]) == 2
    assert "no protocol found" in _err(capsys)
    # a mask on another grid, and an empty mask
    shifted = img.affine.copy()
    shifted[1, 3] += 5
    save_labels(np.ones((16, 16, 2)), tmp_path / "m_shift.nii.gz", shifted)
    assert main(["predict", str(workdir / "m.pt"), str(ph / "dwi.nii.gz"), "--mask", str(tmp_path / "m_shift.nii.gz"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "different grid" in _err(capsys)
    save_labels(np.zeros((16, 16, 2)), tmp_path / "m0.nii.gz", img.affine)
    assert main(["fit", str(ph / "dwi.nii.gz"), "--mask", str(tmp_path / "m0.nii.gz"), "--device", "cpu",
                 "--out", str(tmp_path / "o")]) == 2
    assert "mask is empty" in _err(capsys)
    # labels on another grid for compare
    save_labels(np.ones((16, 16, 2)), tmp_path / "lab.nii.gz", shifted)
    assert main(["compare", str(ph / "truth"), str(ph / "truth"), "--labels", str(tmp_path / "lab.nii.gz")]) == 2
    assert "different grid" in _err(capsys)
    # not a bundle; missing directory
    assert main(["predict", str(ph / "dwi.nii.gz"), str(ph / "dwi.nii.gz"), "--out", str(tmp_path / "o")]) == 2
    assert "not a napari-rverdict model bundle" in _err(capsys)
    assert main(["compare", str(tmp_path / "nope"), str(ph / "truth")]) == 2
    assert "not a directory of maps" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_phantom_with_the_users_protocol(tmp_path, capsys):
    """`rverdict phantom --protocol FILE [--tr]`: the DWI is made with that acquisition, as acquired."""
    from napari_rverdict.data.dwi import load_dwi
    from napari_rverdict.physics.protocol import Protocol
    from napari_rverdict.physics.protocol_files import write_scheme

    acquired = Protocol.innovate(direction_averaged=False)
    scheme = write_scheme(acquired, tmp_path / "acq.scheme", write_tr=False)[0]
    out = tmp_path / "ph"
    assert main(["phantom", "--out", str(out), "--shape", "8", "8", "1", "--protocol", str(scheme)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TR" in err[0] and not out.exists()
    assert main(["phantom", "--out", str(out), "--shape", "8", "8", "1", "--protocol", str(scheme),
                 "--tr", "3000"]) == 0
    dwi = load_dwi(out / "dwi.nii.gz")
    assert dwi.shape == (8, 8, 1, len(acquired))
    np.testing.assert_allclose(dwi.protocol.b, acquired.b, rtol=1e-3, atol=1.0)
    np.testing.assert_allclose(dwi.protocol.tr, 3000.0)


def _hashes(folder):
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_refuses_a_folder_with_other_files_and_changes_nothing(workdir, tmp_path, capsys):
    """Issue 11: `predict model.pt sub01/dwi.nii.gz --out sub01` with a sub01/T1.nii.gz must not touch it."""
    import shutil

    sub = tmp_path / "sub01"
    sub.mkdir()
    for name in ("dwi.nii.gz", "dwi.bval", "dwi.bvec", "dwi.delta", "dwi.smalldel", "dwi.te", "dwi.tr"):
        shutil.copy(workdir / "ph" / name, sub / name)
    (sub / "T1.nii.gz").write_bytes(b"the user's own T1 map")
    before = _hashes(sub)
    assert main(["predict", str(workdir / "m.pt"), str(sub / "dwi.nii.gz"), "--out", str(sub), "--quiet"]) == 2
    assert "--overwrite" in _err(capsys)
    assert _hashes(sub) == before and not any(p.name.startswith(".") for p in sub.iterdir())
    assert main(["predict", str(workdir / "m.pt"), str(sub / "dwi.nii.gz"), "--out", "", "--quiet"]) == 2
    assert "empty" in _err(capsys)


def test_predict_over_existing_maps_needs_overwrite_and_replaces_only_maps(workdir, tmp_path, capsys):
    import shutil

    ph = tmp_path / "ph"
    shutil.copytree(workdir / "ph", ph)
    truth = ph / "truth"
    before = _hashes(truth)
    args = ["predict", str(workdir / "m.pt"), str(ph / "dwi.nii.gz"), "--out", str(truth), "--quiet"]
    assert main(args) == 2
    assert "--overwrite" in _err(capsys)
    assert _hashes(truth) == before
    assert main(args + ["--overwrite"]) == 0
    after = _hashes(truth)
    assert set(after) == set(before) | {"fit_nrmse.nii.gz"}  # no stray temporary file; the fit-quality map added
    assert after["S0.nii.gz"] == before["S0.nii.gz"]  # not a map of the network: left alone
    assert after["f_ic.nii.gz"] != before["f_ic.nii.gz"]


def test_phantom_and_simulate_outputs_are_checked(tmp_path, capsys):
    assert main(["phantom", "--out", "", "--shape", "8", "8", "1"]) == 2
    (tmp_path / "ph").mkdir()
    (tmp_path / "ph" / "notes.txt").write_text("mine")
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--shape", "8", "8", "1"]) == 2
    assert (tmp_path / "ph" / "notes.txt").read_text() == "mine" and len(list((tmp_path / "ph").iterdir())) == 1
    assert main(["simulate", "--n", "10", "--out", str(tmp_path / "sim.dat")]) == 2
    assert ".npz" in _err(capsys)
    assert not list(tmp_path.glob("sim.dat*"))
    assert main(["simulate", "--n", "10", "--out", str(tmp_path / "sim.npz")]) == 0
    assert str(tmp_path / "sim.npz") in capsys.readouterr().out
    assert main(["simulate", "--n", "10", "--out", str(tmp_path / "sim.npz")]) == 2
    assert main(["simulate", "--n", "10", "--out", str(tmp_path / "sim.npz"), "--overwrite"]) == 0


def _files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_phantom_never_replaces_the_protocol_it_reads(workdir, tmp_path, capsys):
    d = tmp_path / "inp"
    d.mkdir()
    for name in ("dwi.bval", "dwi.bvec", "dwi.delta", "dwi.smalldel", "dwi.te", "dwi.tr"):
        (d / name).write_bytes((workdir / "ph" / name).read_bytes())
    before = _files(d)
    rc = main(["phantom", "--protocol", str(d / "dwi.bval"), "--out", str(d), "--shape", "8", "8", "1",
               "--overwrite"])
    assert rc == 2 and "would replace the input" in _err(capsys)
    assert _files(d) == before


def test_compare_checks_the_labels_before_writing(workdir, tmp_path, capsys):
    ph = workdir / "ph"
    lab = nib.load(str(ph / "labels.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(lab.shape, np.int16), lab.affine), str(tmp_path / "empty.nii.gz"))
    rc = main(["compare", str(ph / "truth"), str(ph / "truth"), "--labels", str(tmp_path / "empty.nii.gz"),
               "--csv", str(tmp_path / "c.csv")])
    out, err = capsys.readouterr()
    assert rc == 2 and "no non-zero label" in err and len(err.strip().splitlines()) == 1
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["empty.nii.gz"]


def test_compare_refuses_outputs_that_are_one_file(workdir, tmp_path, capsys):
    ph = workdir / "ph"
    (tmp_path / "a" / "maps").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    for p in (ph / "truth").iterdir():
        (tmp_path / "a" / "maps" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "b" / "maps").symlink_to(ph / "truth")
    before = _files(tmp_path)
    for dirs, outputs in [  # the ROI CSV of truth/ is r_truth.csv; two folders named maps give r_maps.csv twice
        ([ph / "truth", ph / "truth"], ["--csv", tmp_path / "r_truth.csv", "--roi-csv", tmp_path / "r.csv"]),
        ([tmp_path / "a" / "maps", tmp_path / "b" / "maps"], ["--roi-csv", tmp_path / "r.csv"]),
    ]:
        rc = main(["compare", *map(str, dirs), "--labels", str(ph / "labels.nii.gz"), *map(str, outputs)])
        assert rc == 2 and "are one file" in _err(capsys)
        assert _files(tmp_path) == before
