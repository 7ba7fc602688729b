"""predict_volume: masked, chunked inference on 4D volumes; DWI / protocol / mask handling shared with NLLS."""

import warnings

import numpy as np
import pytest

from napari_rverdict import predict_volume as lazy_predict_volume
from napari_rverdict.data.dwi import Dwi, load_dwi, save_dwi
from napari_rverdict.data.label_files import save_labels
from napari_rverdict.data.phantom import LESION_LABELS, NORMAL_LABELS, make_phantom
from napari_rverdict.data.synth import simulate
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import train
from napari_rverdict.maps.predict import predict_volume
from napari_rverdict.maps.voxels import default_mask, prepare_voxels
from napari_rverdict.physics.protocol import Protocol

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle():
    data = simulate("rverdict", n=20000, snr=35, seed=1)
    return train(data, TrainConfig(epochs=5, seed=1, device="cpu")).bundle


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((24, 24, 3), snr=35, seed=3)


def test_lazy_export():
    assert lazy_predict_volume is predict_volume


def test_maps_shape_mask_and_lesion_contrast(bundle, phantom):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the 20-volume INNOVATE matches the bundle after averaging: no warning
        maps = predict_volume(bundle, phantom.to_dwi(), mask=phantom.mask)
    assert list(maps) == [*bundle.map_names, "fit_nrmse"]  # the maps and their fit quality
    for name, m in maps.items():
        assert m.shape == phantom.shape and m.dtype == np.float32, name
        assert np.all(np.isnan(m[~phantom.mask])), name  # NaN outside the mask, never 0
        assert np.all(np.isfinite(m[phantom.mask])), name
    assert np.all(maps["f_ic"][phantom.mask] > 0)
    lesion = np.isin(phantom.labels, LESION_LABELS)
    normal = np.isin(phantom.labels, NORMAL_LABELS)
    assert maps["f_ic"][lesion].mean() > maps["f_ic"][normal].mean() + 0.15
    assert maps["cellularity"][lesion].mean() > maps["cellularity"][normal].mean()
    frac = maps["f_ic"] + maps["f_ees"] + maps["f_vasc"]
    np.testing.assert_allclose(frac[phantom.mask], 1.0, atol=1e-5)


def test_chunks_progress_and_direction_averaging_agree(bundle, phantom):
    calls = []
    a = predict_volume(bundle, phantom.to_dwi(), mask=phantom.mask, chunk=97,
                       progress=lambda d, t: calls.append((d, t)))
    n = int(phantom.mask.sum())
    assert calls[0] == (0, n) and calls[-1] == (n, n)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) == 1 + -(-n // 97)
    # the same volume averaged beforehand, as an array with the bundle's (10-measurement) protocol implied
    avg = phantom.to_dwi().direction_averaged()
    b = predict_volume(bundle, avg.data, mask=phantom.mask)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    # the bundle's measurements in another order: matched by settings, reordered, and said so
    perm = np.r_[5:10, 0:5]
    shuffled = avg.protocol.subset(perm)
    with pytest.warns(UserWarning, match="different order"):
        c = predict_volume(bundle, avg.data[..., perm], shuffled, mask=phantom.mask)
    for k in a:
        np.testing.assert_allclose(a[k], c[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("streamed", [False, True])
def test_the_network_is_folded_once_a_volume_and_gives_the_bundles_maps(bundle, phantom, tmp_path, monkeypatch,
                                                                         streamed):
    """Many chunks (in memory or slabs of a file), one BatchNorm folding; every voxel's maps are those
    Bundle.predict_signals gives for its direction-averaged signal."""
    from napari_rverdict.learn import bundle as bundle_module

    folds = []
    real = bundle_module.fused_for_inference
    monkeypatch.setattr(bundle_module, "fused_for_inference", lambda net: folds.append(1) or real(net))
    dwi = phantom.to_dwi()
    if streamed:
        save_dwi(phantom.dwi, phantom.affine, tmp_path / "dwi.nii.gz", phantom.protocol)
        dwi = tmp_path / "dwi.nii.gz"
    maps = predict_volume(bundle, dwi, mask=phantom.mask, chunk=30)
    assert len(folds) == 1 and int(phantom.mask.sum()) > 5 * 30
    avg = phantom.to_dwi().direction_averaged().data[phantom.mask]
    expected = bundle.predict_signals(avg)
    for k, v in expected.items():
        np.testing.assert_allclose(maps[k][phantom.mask], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_default_mask_is_otsu_of_b0(bundle, phantom):
    m = default_mask(phantom.to_dwi().b0())
    assert m.dtype == bool and m.shape == phantom.shape
    assert (m == phantom.mask).mean() > 0.97  # the gland is bright, the background is noise
    maps = predict_volume(bundle, phantom.to_dwi())
    assert np.array_equal(np.isfinite(maps["f_ic"]), m)
    flat = np.full((4, 4, 2), 5.0)
    assert default_mask(flat).all()
    flat[0, 0, 0] = np.nan
    assert not default_mask(flat)[0, 0, 0]
    with pytest.raises(ValueError, match="3D"):
        default_mask(np.ones((4, 4)))


def test_bad_voxels_left_out_with_one_warning(bundle, phantom):
    data = phantom.dwi.copy()
    idx = np.argwhere(phantom.mask)[:3]
    data[tuple(idx[0])][0] = np.nan
    data[tuple(idx[1])][0] = 0.0  # non-positive b = 0
    data[tuple(idx[2])][7] = np.inf
    with pytest.warns(UserWarning, match="3 of .* NaN or infinite value in some volume, or a b = 0 signal ≤ 0") as rec:
        maps = predict_volume(bundle, data, Protocol.innovate(direction_averaged=False), mask=phantom.mask)
    assert sum("b = 0 signal ≤ 0" in str(w.message) for w in rec) == 1
    for i in idx:
        assert np.isnan(maps["f_ic"][tuple(i)])
    assert (maps["f_ic"][phantom.mask] > 0).sum() == phantom.mask.sum() - 3


def test_clear_errors(bundle, phantom, tmp_path):
    with pytest.raises(ValueError, match="mask is empty"):
        predict_volume(bundle, phantom.to_dwi(), mask=np.zeros(phantom.shape, bool))
    with pytest.raises(ValueError, match="4D"):
        predict_volume(bundle, phantom.dwi[..., 0], Protocol.innovate())
    with pytest.raises(ValueError, match="13 volumes.*needs its protocol"):
        predict_volume(bundle, phantom.dwi[..., :13])
    with pytest.raises(ValueError, match="13 volumes but its protocol"):
        predict_volume(bundle, phantom.dwi[..., :13], "innovate-20")
    with pytest.raises(ValueError, match="mask has shape"):
        predict_volume(bundle, phantom.to_dwi(), mask=np.ones((3, 3, 3), bool))
    with pytest.raises(ValueError, match="chunk"):
        predict_volume(bundle, phantom.to_dwi(), chunk=0)
    # a mask file on another grid
    path = save_dwi(phantom.dwi, phantom.affine, tmp_path / "dwi.nii.gz", phantom.protocol)[0]
    shifted = phantom.affine.copy()
    shifted[0, 3] += 2.0
    save_labels(phantom.mask, tmp_path / "mask.nii.gz", shifted)
    with pytest.raises(ValueError, match="different grid"):
        predict_volume(bundle, path, mask=tmp_path / "mask.nii.gz")


def test_files_in_and_bundle_path(bundle, phantom, tmp_path):
    path = save_dwi(phantom.dwi, phantom.affine, tmp_path / "dwi.nii.gz", phantom.protocol)[0]
    save_labels(phantom.mask, tmp_path / "mask.nii.gz", phantom.affine)
    bpath = bundle.save(tmp_path / "m.pt")
    a = predict_volume(bpath, path, mask=tmp_path / "mask.nii.gz")
    b = predict_volume(bundle, phantom.to_dwi(), mask=phantom.mask)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_prepare_voxels_without_reference_averages_directions(phantom):
    vox = prepare_voxels(phantom.to_dwi(), mask=phantom.mask)
    assert vox.signals.shape == (phantom.mask.sum(), 10) and len(vox.protocol) == 10
    assert len(vox.protocol.shells()) == 10
    flat = phantom.dwi.reshape(-1, 20)[vox.index]
    np.testing.assert_allclose(vox.signals[:, 1], flat[:, 1:4].mean(1), rtol=1e-5)
    assert isinstance(Dwi.from_array(phantom.dwi, None, phantom.protocol), Dwi)


def test_uncertainty_without_support_is_a_clear_error(bundle, phantom):
    if bundle.has_uncertainty:
        pytest.skip("this bundle gives uncertainty")
    with pytest.raises(ValueError, match="uncertainty"):
        predict_volume(bundle, phantom.to_dwi(), mask=phantom.mask, uncertainty=True)


def test_uncertainty_maps_are_3d_and_masked(phantom):
    data = simulate("rverdict", n=3000, snr=35, seed=4)
    b = train(data, TrainConfig(epochs=2, seed=0, device="cpu", uncertainty=True)).bundle
    assert b.has_uncertainty
    maps = predict_volume(b, phantom.to_dwi(), mask=phantom.mask, uncertainty=True, chunk=500)
    sd_keys = [k for k in maps if k.endswith("_sd")]
    assert "f_ic_sd" in sd_keys and set(b.map_names) <= set(maps)
    for k in sd_keys:
        assert maps[k].shape == phantom.shape and maps[k].dtype == np.float32
        assert np.all(np.isnan(maps[k][~phantom.mask])) and np.all(maps[k][phantom.mask] >= 0), k
    plain = predict_volume(b, phantom.to_dwi(), mask=phantom.mask)
    assert not any(k.endswith("_sd") for k in plain)
    np.testing.assert_allclose(plain["f_ic"], maps["f_ic"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- streaming from a file
class _RecordingProxy:
    """Wraps a nibabel dataobj: records the size of every slice read; reading it whole is an error."""

    def __init__(self, proxy):
        self.proxy, self.reads = proxy, []

    @property
    def shape(self):
        return self.proxy.shape

    def __getitem__(self, slicer):
        out = self.proxy[slicer]
        self.reads.append(np.shape(out))
        return out

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole 4D DWI was read")


def _recording(dwi):
    proxy = _RecordingProxy(dwi._image.dataobj)
    dwi._image = type("Img", (), {"dataobj": proxy})()
    return proxy


@pytest.mark.parametrize("chunk", [100, 600, 1200])  # slices of 576 voxels: 1-slice slabs split, 3 slabs, 2 slabs
def test_streaming_from_file_equals_in_memory(bundle, phantom, tmp_path, chunk):
    path = save_dwi(phantom.dwi, phantom.affine, tmp_path / "dwi.nii.gz", phantom.protocol)[0]
    ref = predict_volume(bundle, phantom.to_dwi(), mask=phantom.mask)
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = predict_volume(bundle, path, mask=phantom.mask, chunk=chunk, progress=lambda d, t: calls.append((d, t)))
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].shape == phantom.shape and got[k].dtype == np.float32
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-6)
    n = int(phantom.mask.sum())
    assert calls[0] == (0, n) and calls[-1] == (n, n)
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(t == n for _, t in calls) and len(calls) > 2


def test_streaming_default_mask_and_bad_voxels_as_in_memory(bundle, phantom, tmp_path):
    data = phantom.dwi.copy()
    idx = np.argwhere(phantom.mask)[[0, 40, -1]]  # in different slices
    data[tuple(idx[0])][0] = np.nan
    data[tuple(idx[1])][0] = -1.0
    data[tuple(idx[2])][7] = np.inf
    path = save_dwi(data, phantom.affine, tmp_path / "dwi.nii.gz", phantom.protocol)[0]
    memory = Dwi.from_array(data, phantom.affine, phantom.protocol)
    file_mask = load_dwi(path).b0()
    assert np.array_equal(default_mask(file_mask), default_mask(memory.b0()))
    with pytest.warns(UserWarning, match="b = 0 signal ≤ 0") as rec_mem:
        ref = predict_volume(bundle, memory)
    with pytest.warns(UserWarning, match="b = 0 signal ≤ 0") as rec_file:
        got = predict_volume(bundle, path, chunk=600)
    msgs = [str(w.message) for w in rec_file if "b = 0 signal ≤ 0" in str(w.message)]
    assert msgs == [str(w.message) for w in rec_mem if "b = 0 signal ≤ 0" in str(w.message)]
    # the NaN b = 0 voxel has a NaN mean b = 0, so the default mask leaves it out; the other two are counted
    assert len(msgs) == 1 and msgs[0].startswith(f"2 of {int(default_mask(file_mask).sum())} ")
    assert np.array_equal(np.isnan(got["f_ic"]), np.isnan(ref["f_ic"]))
    for i in idx:
        assert np.isnan(got["f_ic"][tuple(i)])
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-6)


def test_streaming_never_reads_the_whole_volume(bundle, phantom, tmp_path, monkeypatch):
    path = save_dwi(phantom.dwi, phantom.affine, tmp_path / "dwi.nii.gz", phantom.protocol)[0]
    ref = predict_volume(bundle, phantom.to_dwi())
    dwi = load_dwi(path, "innovate-20")
    proxy = _recording(dwi)
    monkeypatch.setattr(Dwi, "data", property(lambda self: pytest.fail("Dwi.data read the whole 4D array")))
    chunk = 600  # one 24 x 24 slice a slab
    got = predict_volume(bundle, dwi, Protocol.innovate(direction_averaged=False), chunk=chunk)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-6)
    x, y, z = phantom.shape
    b0_reads = [s for s in proxy.reads if len(s) == 3]
    slab_reads = [s for s in proxy.reads if len(s) == 4]
    assert len(b0_reads) == int(phantom.protocol.is_b0.sum()) and all(s == (x, y, z) for s in b0_reads)
    assert len(slab_reads) == z and all(s == (x, y, 1, 20) for s in slab_reads)
    assert len(proxy.reads) == len(b0_reads) + len(slab_reads)
    # a mask that skips a slice: that slab is not read at all
    mask = phantom.mask.copy()
    mask[:, :, 1] = False
    proxy.reads.clear()
    predict_volume(bundle, dwi, mask=mask, chunk=chunk)
    assert proxy.reads == [(x, y, 1, 20)] * 2


def test_left_out_voxels_are_nan_and_roi_mean_is_over_mapped_voxels(bundle, phantom):
    """Issue 11: 20 % of a lesion's voxels with a NaN b = 0 must not pull its ROI mean towards 0."""
    from napari_rverdict.maps.compare import roi_statistics

    lesion = phantom.mask & (phantom.labels == LESION_LABELS[0])
    idx = np.argwhere(lesion)
    drop = idx[: max(1, len(idx) // 5)]
    data = phantom.dwi.copy()
    for i in drop:
        data[tuple(i)][0] = np.nan
    with pytest.warns(UserWarning, match="NaN or infinite value in some volume"):
        maps = predict_volume(bundle, data, Protocol.innovate(direction_averaged=False), mask=phantom.mask)
    for i in drop:
        assert np.isnan(maps["f_ic"][tuple(i)])
    assert np.all(np.isnan(maps["f_ic"][~phantom.mask]))
    mapped = lesion.copy()
    mapped[tuple(drop.T)] = False
    expected = float(maps["f_ic"][mapped].mean())
    row = roi_statistics({"f_ic": maps["f_ic"]}, phantom.labels * phantom.mask).get("f_ic", LESION_LABELS[0])
    assert row["n"] == int(mapped.sum())
    assert row["mean"] == pytest.approx(expected, rel=1e-6)


def test_classic_verdict_maps_a_dwi_whose_tr_differs_rverdict_refuses_naming_tr(bundle):
    ph = make_phantom((12, 12, 1), snr=35, seed=4, protocol=Protocol.innovate(direction_averaged=False).with_tr(3000.0))
    data = simulate("verdict", n=2000, snr=35, seed=1)
    verdict = train(data, TrainConfig(epochs=1, seed=1, device="cpu")).bundle
    with pytest.warns(UserWarning, match="TR 3000 ms in the data"):
        maps = predict_volume(verdict, ph.to_dwi(), mask=ph.mask)
    assert np.isfinite(maps["f_ic"][ph.mask]).all()
    with pytest.raises(ValueError, match=r"differs in TR 3000 ms vs the model's 2482 ms"):
        predict_volume(bundle, ph.to_dwi(), mask=ph.mask)


def test_an_extra_series_in_the_dwi_is_left_out_and_named(bundle, phantom, tmp_path):
    """A DWI with 3 more volumes at settings the model does not have (b = 1000, δ 10, Δ 20, TE 50 ms) is mapped from
    its other volumes, as the same DWI without them, and one warning names what is not used."""
    dwi = phantom.to_dwi()
    p = dwi.protocol
    extra = Protocol(np.r_[p.b, [1000.0] * 3], np.r_[p.small_delta, [10.0] * 3], np.r_[p.big_delta, [20.0] * 3],
                     np.r_[p.te, [50.0] * 3], np.r_[p.tr, [2000.0] * 3],
                     np.r_[p.directions, np.eye(3)])
    more = np.concatenate([dwi.data, dwi.data[..., -3:] * 0.5], axis=-1)
    want = predict_volume(bundle, dwi, mask=phantom.mask)
    for source in ("array", "file"):
        given = Dwi.from_array(more, dwi.affine, extra)
        if source == "file":
            given = save_dwi(more, dwi.affine, tmp_path / "more.nii.gz", extra)[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = predict_volume(bundle, given, mask=phantom.mask)
        text = " ".join(str(w.message) for w in caught)
        assert "matches none of the model's and is not used" in text and "TE = 50 ms" in text, text
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=f"{source} {k}")
