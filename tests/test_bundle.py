"""Model bundles: save/load round trip, weights_only loading, refusing foreign files, predict_signals."""

import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from napari_rverdict import load_bundle as lazy_load_bundle
from napari_rverdict.data.synth import noise_free_signals, simulate
from napari_rverdict.errors import InputError
from napari_rverdict.learn.bundle import BUNDLE_FORMAT, Bundle, load_bundle
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import train


@pytest.fixture(scope="module")
def rv():
    data = simulate("rverdict", n=1500, seed=5)
    return data, train(data, TrainConfig(epochs=2, seed=1)).bundle


@pytest.fixture(scope="module")
def vd():
    data = simulate("verdict", n=1500, seed=6)
    return data, train(data, TrainConfig(net="resnetreg", depth=11, width=8, epochs=2)).bundle


def test_round_trip_identical_predictions(rv, tmp_path):
    data, b = rv
    path = b.save(tmp_path / "m.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind
    b2 = load_bundle(path)
    assert lazy_load_bundle is load_bundle
    x = data.signals[:300]
    m1, m2 = b.predict_signals(x), b2.predict_signals(x)
    assert list(m1) == list(b.map_names) == list(m2)
    for k in m1:
        assert m1[k].dtype == np.float32 and m1[k].shape == (300,)
        np.testing.assert_array_equal(m1[k], m2[k])
    assert b2.protocol == b.protocol and b2.ranges == b.ranges and b2.target_names == b.target_names
    assert b2.history == b.history and b2.seed == b.seed and b2.snr == b.snr
    assert (b2.net_name, b2.depth, b2.width) == ("mlp", 3, 150)
    assert b2.versions["torch"] == torch.__version__ and b2.created == b.created
    assert b2.train_config["epochs"] == 2
    text = b2.describe()
    assert "mlp" in text and "rVERDICT" in text and "SNR 35" in text


def test_file_is_weights_only_and_marked(rv, tmp_path):
    _, b = rv
    path = b.save(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == BUNDLE_FORMAT and payload["version"] == 1
    assert isinstance(payload["meta"], dict) and "state_dict" in payload
    # an existing bundle is refused, untouched; overwrite=True replaces it atomically with a valid bundle
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"m\.pt exists; pass overwrite=True"):
        b.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    path.write_bytes(b"old")
    b.save(path, overwrite=True)
    assert load_bundle(path).net_name == "mlp"


def test_save_keeps_permissions_and_new_file_not_private(rv, tmp_path):
    _, b = rv
    path = tmp_path / "m.pt"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    b.save(path, overwrite=True)
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert load_bundle(path).net_name == "mlp"
    old = os.umask(0o022)
    try:
        fresh = b.save(tmp_path / "new.pt")
    finally:
        os.umask(old)
    assert os.stat(fresh).st_mode & 0o777 == 0o644  # 0o666 & ~umask, not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "new.pt"]


def test_refuses_foreign_files(rv, tmp_path):
    _, b = rv
    with pytest.raises(ValueError, match="does not exist"):
        load_bundle(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a napari-rverdict model bundle.*format marker"):
        load_bundle(tmp_path / "plain.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a napari-rverdict model bundle"):
        load_bundle(tmp_path / "notes.txt")
    torch.save(b.network, tmp_path / "module.pt")  # a pickled module: refused by weights_only loading
    with pytest.raises(ValueError, match="not a napari-rverdict model bundle"):
        load_bundle(tmp_path / "module.pt")
    with open(tmp_path / "p.pkl", "wb") as fh:
        pickle.dump({"format": BUNDLE_FORMAT}, fh)
    with pytest.raises(ValueError, match="not a napari-rverdict model bundle"):
        load_bundle(tmp_path / "p.pkl")
    payload = torch.load(b.save(tmp_path / "m.pt"), weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="version 99"):
        load_bundle(tmp_path / "future.pt")
    with pytest.raises(ValueError, match="not a file"):
        load_bundle(tmp_path)


def test_predict_normalises_rverdict_raw_scale(rv):
    data, b = rv
    x = data.signals[:200].astype(np.float64)
    scale = np.random.default_rng(0).uniform(50, 5000, size=(200, 1))  # arbitrary scanner scale per voxel
    m1 = b.predict_signals(x)
    m2 = b.predict_signals(x * scale)
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, atol=1e-7)
    est = b.predict_signals(x * scale, return_all=False)
    assert tuple(est) == b.target_names


def test_predict_normalises_verdict_per_series(vd):
    data, b = vd
    p = b.protocol
    params = {k: v[:100] for k, v in data.params.items()}
    clean = noise_free_signals("verdict", params, p)
    sid = p.series_ids()
    # each series gets its own T2/T1 weighting and the voxel an arbitrary scale: per-series b0 ratios remove both
    weights = np.random.default_rng(1).uniform(0.2, 1.0, size=sid.max() + 1)[sid]
    raw = clean * weights * np.random.default_rng(2).uniform(10, 1000, size=(100, 1))
    m1, m2 = b.predict_signals(clean), b.predict_signals(raw)
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, atol=1e-7)
    assert list(m1) == ["f_ic", "f_ees", "f_vasc", "R", "cellularity"]
    total = m1["f_ic"] + m1["f_ees"] + m1["f_vasc"]
    np.testing.assert_allclose(total, 1.0, atol=1e-5)


def test_predict_with_reordered_protocol(rv):
    data, b = rv
    x = data.signals[:100] * 7.0
    perm = np.random.default_rng(3).permutation(len(b.protocol))
    shuffled = b.protocol.subset(perm)
    with pytest.warns(UserWarning, match="different order"):
        m2 = b.predict_signals(x[:, perm], protocol=shuffled)
    m1 = b.predict_signals(x)
    for k in m1:
        np.testing.assert_array_equal(m1[k], m2[k])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b.predict_signals(x, protocol=b.protocol)  # same order: no warning



def test_predict_direction_resolved_signals_are_averaged(rv):
    """Raw signals of the 20 acquired INNOVATE volumes with their protocol give the maps of their direction average
    (as predict_volume does), not of one direction per shell with the others called unmatched."""
    from napari_rverdict.physics.protocol import Protocol, direction_average

    data, b = rv
    p20 = Protocol.innovate(direction_averaged=False)
    x10 = noise_free_signals("rverdict", {k: v[:50] for k, v in data.params.items()}, b.protocol)
    rows = np.repeat(np.arange(len(b.protocol)), b.protocol.n_volumes)  # 20 volumes, each of its measurement
    tilt = np.where(p20.b > 0, 1.0 + 0.3 * (np.arange(20) % 4 - 2), 1.0)  # anisotropic: directions differ
    x20 = x10[:, rows] * tilt
    averaged, _ = direction_average(x20, p20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the averaged shells match the model's: nothing to report
        got = b.predict_signals(x20, protocol=p20)
    want = b.predict_signals(averaged)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
    by_name = b.predict_signals(x20, protocol="innovate-20")  # a preset name, as predict_volume takes
    for k in want:
        np.testing.assert_allclose(by_name[k], want[k], rtol=1e-6, atol=1e-6)

def test_predict_bad_inputs(rv):
    data, b = rv
    with pytest.raises(ValueError, match="10 measurements but the model's protocol has|has 10"):
        b.predict_signals(np.ones((5, 9)))
    with pytest.raises(ValueError, match="9 measurements"):
        b.predict_signals(np.ones((5, 9)))
    with pytest.raises(ValueError, match="2-D"):
        b.predict_signals(np.ones(10))
    with pytest.raises(ValueError, match="empty"):
        b.predict_signals(np.ones((0, 10)))
    x = np.ones((4, 10))
    x[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        b.predict_signals(x)
    with pytest.raises(ValueError, match="normalised|non-positive|no positive"):
        b.predict_signals(np.zeros((2, 10)))


def test_chunking_and_clipping(rv):
    data, b = rv
    x = data.signals[:257]
    a = b.predict_signals(x, chunk=16)
    c = b.predict_signals(x)
    for k in a:
        np.testing.assert_allclose(a[k], c[k], rtol=1e-6)
    est = b.predict_signals(x, return_all=False)
    for k, (lo, hi) in b.ranges.items():
        if k in est:
            assert est[k].min() >= lo - 1e-4 and est[k].max() <= hi + 1e-4
    assert isinstance(b, Bundle) and os.fspath("x")


def test_network_calls_are_cache_sized_on_the_cpu_only(rv, monkeypatch):
    import torch

    from napari_rverdict.learn import device
    assert device.network_chunk(torch.device("cpu"), 65536) == device.CPU_NETWORK_CHUNK
    assert device.network_chunk(torch.device("cpu"), 100) == 100
    assert device.network_chunk(torch.device("cuda"), 65536) == 65536  # a GPU takes the whole block
    data, b = rv
    x = data.signals[:257]
    whole = b.predict_signals(x, uncertainty=b.has_uncertainty)
    monkeypatch.setattr(device, "CPU_NETWORK_CHUNK", 10)  # 26 network calls for one block of 257
    parts = b.predict_signals(x, uncertainty=b.has_uncertainty)
    assert whole.keys() == parts.keys()
    for k in whole:
        np.testing.assert_allclose(parts[k], whole[k], rtol=1e-6, atol=1e-7)


def test_load_refuses_a_changed_byte_in_the_weights(rv, tmp_path):
    """torch.load does not check the archive's CRCs: one flipped byte of a weight loaded silently before."""
    import struct
    import zipfile

    from napari_rverdict.errors import InputError

    _, b = rv
    path = b.save(tmp_path / "m.pt")
    with zipfile.ZipFile(path) as z:
        member = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[member.header_offset + 26:member.header_offset + 30])
    raw[member.header_offset + 30 + name_len + extra_len + 8] ^= 0x10  # one bit of one weight
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(raw))
    assert torch.load(bad, weights_only=True)["format"] == "napari-rverdict-bundle"  # torch itself reads it
    with pytest.raises(InputError, match="damaged napari-rverdict bundle .*checksum") as info:
        load_bundle(bad)
    assert str(bad) in str(info.value)
    assert load_bundle(path).network is not None  # the saved file itself passes


@pytest.mark.parametrize("damage", ["nan_weight", "inf_range", "inverted_range"])
def test_load_refuses_nonfinite_or_inverted(rv, tmp_path, damage):
    from napari_rverdict.errors import InputError

    _, b = rv
    payload = torch.load(b.save(tmp_path / "m.pt"), weights_only=True)
    if damage == "nan_weight":
        next(v for v in payload["state_dict"].values() if v.is_floating_point()).view(-1)[0] = float("nan")
        needle = "NaN or inf weights"
    elif damage == "inf_range":
        payload["meta"]["ranges"]["R"] = [1.0, float("inf")]
        needle = "non-finite training range for R"
    else:
        payload["meta"]["ranges"]["R"] = [12.0, 1.0]
        needle = "inverted training range for R"
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(InputError, match=needle) as info:
        load_bundle(bad)
    assert str(bad) in str(info.value)
