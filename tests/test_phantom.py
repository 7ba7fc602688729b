"""The digital prostate phantom: anatomy, cancer-like lesion contrast, noise, files, and the shipped copy."""

import json

import numpy as np
import pytest

from napari_rverdict.data.phantom import (
    LABEL_NAMES,
    LESION_LABELS,
    NORMAL_LABELS,
    REGION_PARAMETERS,
    load_phantom,
    make_labels,
    make_phantom,
    phantom_affine,
    sample_data_dir,
    save_phantom,
)
from napari_rverdict.data.synth import noise_free_signals
from napari_rverdict.physics import Protocol, get_model


@pytest.fixture(scope="module")
def ph():
    return make_phantom((32, 32, 4), snr=35, seed=0)


def test_anatomy_and_labels(ph):
    labels = ph.labels
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    assert np.array_equal(ph.mask, labels > 0)
    assert ph.lesion_mask.sum() > 0 and ph.normal_mask.sum() > ph.lesion_mask.sum()
    # the transition zone is anterior-central, the PZ lesion posterior-left: compare centroids (y: post → ant)
    tz = np.argwhere(labels == 1).mean(0)
    pz_lesion = np.argwhere(labels == 3).mean(0)
    assert tz[1] > pz_lesion[1] and pz_lesion[0] < labels.shape[0] / 2
    assert make_labels((8, 8, 1)).shape == (8, 8, 1)
    aff = phantom_affine((32, 32, 4))
    np.testing.assert_allclose(np.diag(aff)[:3], (1.25, 1.25, 5.0))
    np.testing.assert_allclose(aff @ np.array([15.5, 15.5, 1.5, 1.0]), [0, 0, 0, 1])  # centred on the origin
    assert ph.dwi.shape == (32, 32, 4, 20) and ph.dwi.dtype == np.float32
    assert ph.protocol == Protocol.innovate(direction_averaged=False)


def test_lesions_differ_the_way_cancer_does(ph):
    t = ph.truth
    les, nor = ph.lesion_mask, ph.normal_mask
    assert t["f_ic"][les].mean() > t["f_ic"][nor].mean() + 0.2
    assert t["cellularity"][les].mean() > 1.5 * t["cellularity"][nor].mean()
    for k in ("D_ees", "T2_vasc_ees", "T2_ic", "T1"):
        assert t[k][les].mean() < t[k][nor].mean(), k
    for lab in LESION_LABELS:
        assert REGION_PARAMETERS[lab]["f_ic"] > max(REGION_PARAMETERS[n]["f_ic"] for n in NORMAL_LABELS)


def test_truth_is_smooth_valid_and_zero_outside(ph):
    t, m = ph.truth, ph.mask
    np.testing.assert_allclose((t["f_ic"] + t["f_ees"] + t["f_vasc"])[m], 1.0, atol=1e-5)
    assert t["f_vasc"][m].min() >= 0.03 - 1e-6
    for k, v in t.items():
        assert np.all(v[~m] == 0), k
    ranges = get_model("rverdict").default_ranges()
    for k in ("R", "T1", "T2_ic", "T2_vasc_ees", "D_ees"):
        assert ranges[k][0] <= t[k][m].min() and t[k][m].max() <= ranges[k][1]
    # smooth inside a region: varies, but a few per cent around the region's mean
    sel = ph.labels == 2
    d = t["D_ees"][sel]
    assert 0 < d.std() < 0.1 * d.mean()
    np.testing.assert_allclose(t["cellularity"][m], t["f_ic"][m] / t["R"][m] ** 3, rtol=1e-5)


def test_signal_and_rician_noise():
    model = get_model("rverdict")
    clean = make_phantom((16, 16, 2), snr=1e9, seed=2)
    sel = clean.mask
    inside = {k: clean.truth[k][sel].astype(float) for k in model.estimated_names}
    inside["S0"] = clean.s0[sel]
    expected = noise_free_signals(model, inside, clean.protocol)
    np.testing.assert_allclose(clean.dwi[sel], expected, rtol=1e-4)
    assert 900 < np.median(clean.s0[sel]) < 1100
    noisy = make_phantom((16, 16, 2), snr=20, seed=2, snr_reference="peak")  # σ = each voxel's brightest / SNR
    resid = (noisy.dwi[sel] - expected) / expected.max(1, keepdims=True)
    bright = expected / expected.max(1, keepdims=True) > 0.5  # Rician ≈ Gaussian where the signal is high
    assert resid[bright].std() == pytest.approx(1 / 20, rel=0.15)
    assert np.all(noisy.dwi >= 0)
    bg = noisy.dwi[~noisy.mask]
    assert 0 < bg.mean() < 0.2 * np.median(noisy.dwi[sel][:, 0])  # Rician floor of zero signal
    # the default is the scanner's convention ("s0", as simulate): one σ = 1000 / SNR on every volume, air included
    scanner = make_phantom((16, 16, 2), snr=20, seed=2)
    assert scanner.snr_reference == "s0" and scanner.sigma == pytest.approx(1000 / 20)
    raw = scanner.dwi[sel] - expected
    assert raw[bright].std() == pytest.approx(50.0, rel=0.15)
    assert scanner.dwi[~scanner.mask].mean() == pytest.approx(50.0 * np.sqrt(np.pi / 2), rel=0.05)  # Rayleigh mean


def test_seeded_and_errors():
    a = make_phantom((12, 12, 1), seed=5)
    b = make_phantom((12, 12, 1), seed=5)
    c = make_phantom((12, 12, 1), seed=6)
    np.testing.assert_array_equal(a.dwi, b.dwi)
    assert not np.array_equal(a.dwi, c.dwi)
    with pytest.raises(ValueError, match="shape"):
        make_phantom((4, 12, 1))
    with pytest.raises(ValueError, match="snr"):
        make_phantom((12, 12, 1), snr=-1)


def test_save_and_load_round_trip(tmp_path):
    ph = make_phantom((16, 16, 2), snr=35, seed=1)
    written = save_phantom(ph, tmp_path)
    assert (tmp_path / "phantom.json") in written and (tmp_path / "truth" / "S0.nii.gz") in written
    back = load_phantom(tmp_path)
    np.testing.assert_allclose(back.dwi.data, ph.dwi)
    np.testing.assert_allclose(back.dwi.affine, ph.affine)
    assert np.array_equal(back.labels, ph.labels) and np.array_equal(back.mask, ph.mask)
    for k, v in ph.truth.items():
        np.testing.assert_array_equal(back.truth[k], v)
    for k in ("b", "small_delta", "big_delta", "te", "tr"):
        np.testing.assert_allclose(getattr(back.dwi.protocol, k), getattr(ph.protocol, k), rtol=1e-5)
    assert back.label_names == LABEL_NAMES
    meta = json.loads((tmp_path / "phantom.json").read_text())
    assert meta["snr"] == 35 and meta["seed"] == 1 and "--shape 16 16 2" in meta["regenerate"]
    with pytest.raises(ValueError, match="holds no phantom"):
        load_phantom(tmp_path / "truth")


def test_shipped_sample_is_small_and_regenerable():
    d = sample_data_dir()
    assert d is not None and (d / "dwi.nii.gz").exists()
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    assert size < 5e6
    shipped = load_phantom(d)
    assert shipped.dwi.shape == (64, 64, 8, 20)
    meta = json.loads((d / "phantom.json").read_text())
    again = make_phantom(tuple(meta["shape"]), snr=meta["snr"], seed=meta["seed"],
                         snr_reference=meta.get("snr_reference", "peak"))
    np.testing.assert_array_equal(shipped.dwi.data, again.dwi)
    np.testing.assert_array_equal(shipped.labels, again.labels)
    np.testing.assert_allclose(shipped.truth["f_ic"], again.truth["f_ic"])


def test_prior_tissue_is_drawn_from_the_training_prior(tmp_path):
    """tissue="prior": every gland voxel an independent draw of the training prior (so sd-map coverage can be held to
    nominal levels on it), with the anatomical phantom's geometry, S0 field and noise."""
    from scipy import stats

    ph = make_phantom((32, 32, 4), snr=35, seed=3, snr_reference="s0", tissue="prior")
    anat = make_phantom((32, 32, 4), snr=35, seed=3, snr_reference="s0")
    assert np.array_equal(ph.mask, anat.mask) and ph.sigma == anat.sigma and ph.tissue == "prior"
    lo, hi = get_model("rverdict").default_ranges()["R"]
    r = ph.truth["R"][ph.mask]
    assert stats.kstest(r, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    # fractions uniform on the simplex (Dirichlet(1, 1, 1)): each marginal is Beta(1, 2) on the default ranges
    assert stats.kstest(ph.truth["f_ic"][ph.mask], stats.beta(1, 2).cdf).pvalue > 1e-3
    fsum = ph.truth["f_ic"] + ph.truth["f_ees"] + ph.truth["f_vasc"]
    np.testing.assert_allclose(fsum[ph.mask], 1.0, atol=1e-5)
    # independent draws: neighbouring voxels are uncorrelated (the anatomical truth is smooth)
    f = ph.truth["f_ic"]
    pair = ph.mask[1:] & ph.mask[:-1]
    assert abs(np.corrcoef(f[1:][pair], f[:-1][pair])[0, 1]) < 0.1
    save_phantom(ph, tmp_path)
    meta = json.loads((tmp_path / "phantom.json").read_text())
    assert meta["tissue"] == "prior" and meta["regenerate"].endswith("--tissue prior")
    with pytest.raises(ValueError, match="tissue"):
        make_phantom((12, 12, 1), tissue="brain")


def test_save_phantom_refuses_existing_files_before_writing_any(tmp_path):
    from napari_rverdict.data.phantom import phantom_files
    from napari_rverdict.errors import InputError

    ph = make_phantom((8, 8, 1), snr=35, seed=2)
    (tmp_path / "truth").mkdir()
    (tmp_path / "truth" / "f_ic.nii.gz").write_bytes(b"my f_ic")
    (tmp_path / "notes.txt").write_text("kept")  # not a phantom file: no clash
    with pytest.raises(InputError, match=r"f_ic\.nii\.gz exists; pass overwrite=True to replace it"):
        save_phantom(ph, tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "notes.txt", "truth", "truth/f_ic.nii.gz"]  # nothing else written, not even a temporary file
    assert (tmp_path / "truth" / "f_ic.nii.gz").read_bytes() == b"my f_ic"
    written = save_phantom(ph, tmp_path, overwrite=True)
    assert written == phantom_files(ph, tmp_path)
    np.testing.assert_array_equal(load_phantom(tmp_path).truth["f_ic"], ph.truth["f_ic"])
    assert (tmp_path / "notes.txt").read_text() == "kept"
    with pytest.raises(InputError, match=r"files .*dwi\.nii\.gz, .* and \d+ more exist"):  # all of them now
        save_phantom(ph, tmp_path)
