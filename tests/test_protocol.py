"""Protocols: presets, validation, the two published file formats, round trips and matching."""

import json
from pathlib import Path

import numpy as np
import pytest

from napari_rverdict import Protocol
from napari_rverdict.physics import (
    ProtocolError,
    direction_average,
    load_protocol,
    read_fsl,
    read_scheme,
    write_fsl,
    write_scheme,
)

REF = Path(__file__).resolve().parent / "data" / "protocols"  # copies of the published files (see its README)
SCHEME = REF / "innovate-camino" / "NOptimisedV_IN.scheme"
BVAL = REF / "innovate-rverdict-example" / "data.bval"
needs_ref = pytest.mark.skipif(not SCHEME.exists(), reason="tests/data/protocols missing")


def test_innovate_direction_averaged_layout():
    p = Protocol.innovate()
    assert len(p) == 10
    np.testing.assert_array_equal(p.b, [0, 90, 0, 500, 0, 1500, 0, 2000, 0, 3000])
    # each b0 carries its series' timings
    np.testing.assert_array_equal(p.small_delta[::2], p.small_delta[1::2])
    np.testing.assert_array_equal(p.te, [50, 50, 65, 65, 90, 90, 71, 71, 80, 80])
    np.testing.assert_array_equal(p.tr, [2482] * 6 + [3945] * 2 + [3349] * 2)
    np.testing.assert_array_equal(p.big_delta[1::2], [23.8, 31.3, 43.8, 34.3, 38.8])
    assert p.series_ids().tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [r.tolist() for r in p.b0_reference()][:4] == [[0], [0], [2], [2]]


def test_innovate_20_volumes_and_direction_average():
    p20 = Protocol.innovate(direction_averaged=False)
    assert len(p20) == 20
    assert np.allclose(np.linalg.norm(p20.directions[~p20.is_b0], axis=1), 1.0)
    data = np.random.default_rng(0).uniform(1, 2, (2, 3, 20))
    avg, pavg = direction_average(data, p20)
    assert avg.shape == (2, 3, 10)
    assert pavg == Protocol.innovate()
    np.testing.assert_allclose(avg[..., 1], data[..., 1:4].mean(-1))
    np.testing.assert_allclose(avg[..., 0], data[..., 0])
    with pytest.raises(ProtocolError, match="20"):
        direction_average(data[..., :19], p20)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(b=[0, -5]), "negative"),
        (dict(small_delta=[10, 40]), "longer than Δ"),
        (dict(te=[50]), "one value per measurement"),
        (dict(b=[0, np.nan]), "NaN"),
        (dict(te=[0.05, 0.05]), "seconds"),
        (dict(tr=[2.4, 2.4]), "seconds"),
        (dict(directions=[[0, 0, 0], [1, 1, 0]]), "unit"),
        (dict(b=[], small_delta=[], big_delta=[], te=[], tr=[]), "at least one"),
    ],
)
def test_validation_errors(kwargs, message):
    base = dict(b=[0, 1000], small_delta=[10, 10], big_delta=[30, 30], te=[50, 50], tr=[2000, 2000])
    base.update(kwargs)
    with pytest.raises(ProtocolError, match=message):
        Protocol(**base)


def test_missing_b0_in_a_series_is_named():
    p = Protocol([0, 1000, 2000], [10, 10, 12], [30, 30, 32], [50, 50, 70], [2000, 2000, 2000])
    with pytest.raises(ProtocolError, match="no b = 0 in its series"):
        p.b0_reference()


@needs_ref
def test_read_published_camino_scheme():
    with pytest.warns(UserWarning, match="TR"):
        p = read_scheme(SCHEME)
    assert len(p) == 20 and not p.has_tr
    # b from γ²G²δ²(Δ − δ/3), as the reference README computes
    shells = p.direction_averaged()
    np.testing.assert_allclose(sorted(shells.b[~shells.is_b0]), [91.7, 501.9, 1500.0, 2006.4, 2990.9], atol=0.1)
    assert p.b0_reference()  # b0 rows found their series by TE
    assert np.all(p.small_delta > 0)  # b0 rows got their series' δ


@needs_ref
def test_read_published_rverdict_per_volume_files_and_match_both_to_innovate():
    p = read_fsl(BVAL)
    assert len(p) == 20 and p.has_tr
    innovate20 = Protocol.innovate(direction_averaged=False)
    np.testing.assert_allclose(p.b, innovate20.b)
    np.testing.assert_allclose(p.tr, innovate20.tr)
    idx, notes = p.direction_averaged().match_to(Protocol.innovate())
    assert idx.tolist() == list(range(10)) and notes == []
    with pytest.warns(UserWarning):
        scheme = read_scheme(SCHEME).direction_averaged()
    idx, notes = scheme.match_to(Protocol.innovate())
    assert idx.tolist() == [8, 9, 6, 7, 4, 5, 2, 3, 0, 1]  # series stored in the opposite order
    assert any("2006.4" in n for n in notes) and any("TR is unknown" in n for n in notes)
    np.testing.assert_allclose(scheme.b[idx], Protocol.innovate().b, rtol=0.02, atol=0)


def test_scheme_round_trip_with_tr(tmp_path):
    p = Protocol.innovate(direction_averaged=False)
    written = write_scheme(p, tmp_path / "x.scheme")
    assert [w.name for w in written] == ["x.scheme", "x.tr"]
    q = read_scheme(tmp_path / "x.scheme")
    np.testing.assert_allclose(q.b, p.b, rtol=1e-6)
    for key in ("small_delta", "big_delta", "te", "tr"):
        np.testing.assert_allclose(getattr(q, key), getattr(p, key), rtol=1e-6)
    np.testing.assert_allclose(q.directions, p.directions, atol=1e-8)
    q2 = read_scheme(tmp_path / "x.scheme", tr=3000.0)
    assert np.all(q2.tr == 3000.0)


def test_fsl_round_trip_per_volume_files(tmp_path):
    p = Protocol.innovate(direction_averaged=False)
    write_fsl(p, tmp_path / "dwi")
    q = load_protocol(tmp_path / "dwi.nii.gz")  # found beside a DWI by stem
    assert q == p
    np.testing.assert_allclose(q.directions, p.directions, atol=1e-8)


def _write(fmt, protocol, tmp_path, **kwargs):
    if fmt == "scheme":
        return write_scheme(protocol, tmp_path / "p.scheme", **kwargs)
    return write_fsl(protocol, tmp_path / "p", **kwargs)


def _assert_same_measurements(q, p):
    for key in ("b", "small_delta", "big_delta", "te", "tr"):
        np.testing.assert_allclose(getattr(q, key), getattr(p, key), rtol=1e-6, atol=1e-9, err_msg=key)
    np.testing.assert_array_equal(q.n_volumes, p.n_volumes)


@pytest.mark.parametrize("fmt", ["scheme", "fsl"])
@pytest.mark.parametrize("preset", ["innovate", "innovate-20"])
def test_presets_round_trip_through_both_formats(tmp_path, preset, fmt):
    """Written a row per acquired volume, read back: the same 20 volumes, and (direction-averaged) the same
    measurements with the same n_volumes, b, δ, Δ, TE, TR."""
    p = load_protocol(preset)
    path = _write(fmt, p, tmp_path)[0]
    acquired = load_protocol(path)
    assert len(acquired) == int(p.n_volumes.sum()) == 20
    _assert_same_measurements(acquired, Protocol.innovate(direction_averaged=False))
    back = load_protocol(path, direction_averaged=preset == "innovate")
    _assert_same_measurements(back, p)
    if preset == "innovate-20":  # its own directions
        np.testing.assert_allclose(back.directions, p.directions, atol=1e-8)
    else:  # b = 0: the zero vector; the 3 volumes of each b > 0: x, y, z
        dw = acquired.b > 0
        np.testing.assert_array_equal(acquired.directions[~dw], 0.0)
        np.testing.assert_array_equal(acquired.directions[dw], np.tile(np.eye(3), (5, 1)))
    _assert_same_measurements(load_protocol(path, direction_averaged=True), Protocol.innovate())


@pytest.mark.parametrize("fmt", ["scheme", "fsl"])
def test_a_measurement_of_n_volumes_is_written_as_n_rows(tmp_path, fmt):
    p = Protocol([0, 500, 1000, 2000], [12, 12, 15, 18], [30, 30, 35, 40], [70, 70, 70, 80], [3000, 3000, 3000, 3000],
                 n_volumes=[2, 1, 6, 4])
    written = _write(fmt, p, tmp_path)
    if fmt == "scheme":
        rows = np.loadtxt(written[0], skiprows=1)
        dirs = rows[:, :3]
        assert [w.name for w in written] == ["p.scheme", "p.tr"]
    else:
        rows = np.loadtxt(tmp_path / "p.bval", ndmin=1)
        dirs = np.loadtxt(tmp_path / "p.bvec").T
        assert [w.name for w in written] == ["p.bval", "p.bvec", "p.delta", "p.smalldel", "p.te", "p.tr"]
    assert len(rows) == len(dirs) == 2 + 1 + 6 + 4
    np.testing.assert_array_equal(dirs[:2], 0.0)  # b = 0: zero vectors
    np.testing.assert_allclose(np.linalg.norm(dirs[2:], axis=1), 1.0, rtol=1e-8)
    for block in (dirs[3:9], dirs[9:13]):  # the repeats of one measurement: distinct (not even opposite) directions
        cos = np.abs(block @ block.T)[~np.eye(len(block), dtype=bool)]
        assert cos.max() < 0.9
    back = load_protocol(written[0], direction_averaged=True)
    _assert_same_measurements(back, p)
    np.testing.assert_array_equal(load_protocol(written[0]).n_volumes, 1)  # as acquired: a measurement per row
    # a DWI holding one (averaged) volume per measurement: one row each
    flat = _write(fmt, p, tmp_path / "flat", per_measurement=True)[0]
    assert len(load_protocol(flat)) == len(p)


@pytest.mark.parametrize("fmt", ["scheme", "fsl"])
def test_b0_timings_survive_the_round_trip(tmp_path, fmt):
    """A b = 0 whose δ and Δ differ from its series' diffusion-weighted volumes keeps them (a scheme row with G = 0
    still says b = 0), and so stays a measurement of its own."""
    p = Protocol([0, 0, 1000], [10, 20, 20], [30, 40, 40], [80, 80, 80], [3000, 3000, 3000], n_volumes=[1, 1, 3])
    back = load_protocol(_write(fmt, p, tmp_path)[0], direction_averaged=True)
    _assert_same_measurements(back, p)


def test_spread_directions():
    from napari_rverdict.physics.protocol import spread_directions

    np.testing.assert_array_equal(spread_directions(3), np.eye(3))
    np.testing.assert_array_equal(spread_directions(1), [[1, 0, 0]])
    six = spread_directions(6)  # the icosahedron's six axes: every pair arccos(1/√5) = 63.43° apart
    cos = np.abs(six @ six.T)[~np.eye(6, dtype=bool)]
    np.testing.assert_allclose(cos, 1 / np.sqrt(5), atol=1e-3)
    for n in (4, 10, 30):
        d = spread_directions(n)
        assert d.shape == (n, 3)
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
        closest = np.degrees(np.arccos(np.abs(d @ d.T)[~np.eye(n, dtype=bool)].max()))
        assert closest > 0.8 * np.degrees(np.sqrt(2 * np.pi / n))  # near the best a set of n can do
    with pytest.raises(ProtocolError):
        spread_directions(0)


def test_fsl_with_json_sidecar_in_seconds_and_ms(tmp_path):
    (tmp_path / "d.bval").write_text("0 1000 1000\n")
    (tmp_path / "d.json").write_text(json.dumps({"PulseDuration": 0.02, "PulseSeparation": 0.04,
                                                 "EchoTime": [0.08, 0.08, 0.08], "RepetitionTime": 3.0}))
    p = read_fsl(tmp_path / "d.bval")
    assert p.small_delta[1] == pytest.approx(20.0) and p.te[0] == pytest.approx(80.0) and p.tr[2] == pytest.approx(3000)
    (tmp_path / "d.json").write_text(json.dumps({"units": "ms", "small_delta": 20, "big_delta": 40, "te": 80}))
    p = read_fsl(tmp_path / "d.bval")
    assert p.big_delta[2] == 40 and not p.has_tr
    (tmp_path / "d.json").write_text(json.dumps({"small_delta": 20, "big_delta": 40, "te": 80}))
    with pytest.raises(ProtocolError, match="seconds"):  # ms written without saying so
        read_fsl(tmp_path / "d.bval")


def test_bad_files_and_names(tmp_path):
    with pytest.raises(ProtocolError, match="unknown protocol"):
        load_protocol("nonsense")
    (tmp_path / "bad.scheme").write_text("hello\n1 2 3\n")
    with pytest.raises(ProtocolError, match="not a Camino scheme"):
        read_scheme(tmp_path / "bad.scheme")
    (tmp_path / "short.scheme").write_text("VERSION: 1\n0 0 0 0 0 0 0.08\n1 0 0 0.05\n")
    with pytest.raises(ProtocolError):
        read_scheme(tmp_path / "short.scheme", tr=2000)
    (tmp_path / "x.bval").write_text("0 1000\n")
    with pytest.raises(ProtocolError, match="no timings"):
        read_fsl(tmp_path / "x.bval")


def test_match_refuses_what_cannot_be_used():
    p = Protocol.innovate()
    other = Protocol(p.b * np.where(p.b > 2500, 1.5, 1.0), p.small_delta, p.big_delta, p.te, p.tr)
    with pytest.raises(ProtocolError, match="no measurement of the data matches"):
        other.match_to(p)
    with pytest.raises(ProtocolError, match="9 measurements"):
        p.subset(slice(0, 9)).match_to(p)


def test_protocol_dict_round_trip():
    p = Protocol.innovate(direction_averaged=False)
    q = Protocol.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p and q.name == p.name


def test_acquired_volumes_inverts_direction_averaging():
    p = Protocol.innovate()
    acquired = p.acquired_volumes()
    assert len(acquired) == 20 and acquired == Protocol.innovate(direction_averaged=False)
    np.testing.assert_array_equal(acquired.n_volumes, 1)
    dw = acquired.b > 0
    np.testing.assert_array_equal(acquired.directions[~dw], 0.0)
    np.testing.assert_array_equal(acquired.directions[dw], np.tile(np.eye(3), (5, 1)))
    back = acquired.direction_averaged()
    assert back == p and back.n_volumes.tolist() == p.n_volumes.tolist()
    p20 = Protocol.innovate(direction_averaged=False)  # one volume each: its own directions
    np.testing.assert_array_equal(p20.acquired_volumes().directions, p20.directions)


def test_classic_verdict_matching_ignores_tr_but_not_te():
    p = Protocol.innovate()
    other = p.with_tr(3000.0)  # another scanner's TR: no T1 term, each series divided by its own b = 0
    with pytest.raises(ProtocolError, match=r"differs in TR 3000 ms vs the model's 2482 ms"):
        other.match_to(p)  # rVERDICT: TR matters, and the refusal names it
    idx, notes = other.match_to(p, use_tr=False)
    assert idx.tolist() == list(range(10))
    assert len(notes) == 1 and "TR 3000 ms in the data where the model's protocol has 2482, 3945, 3349 ms" in notes[0]
    # unknown TR says nothing when TR is not used
    assert p.with_tr(np.nan).match_to(p, use_tr=False)[1] == []
    # TE still identifies each series' b = 0 (and sets its T2 weighting): a TE off by 20 % is refused, named
    te = np.where(p.te == 50.0, 60.0, p.te)
    with pytest.raises(ProtocolError, match=r"differs in TE 60 ms vs the model's 50 ms"):
        Protocol(p.b, p.small_delta, p.big_delta, te, p.tr).match_to(p, use_tr=False)


def test_classic_verdict_matching_says_when_one_series_has_two_trs():
    p = Protocol.innovate()
    tr = p.tr.copy()
    tr[1] = 3000.0  # the b = 90 measurement, whose series' b = 0 (measurement 0) keeps TR 2482
    idx, notes = Protocol(p.b, p.small_delta, p.big_delta, p.te, tr).match_to(p, use_tr=False)
    assert idx.tolist() == list(range(10))
    assert any("measurements [0, 1] form one series" in n and "2482, 3000 ms" in n for n in notes)


def test_refusal_names_every_setting_that_differs():
    p = Protocol.innovate()
    other = Protocol(p.b, p.small_delta, p.big_delta, np.where(p.te == 90.0, 120.0, p.te),
                     np.where(p.te == 90.0, 5000.0, p.tr))
    with pytest.raises(ProtocolError, match=r"model's measurement 4 .*differs in TE 120 ms vs the model's 90 ms, "
                                            r"TR 5000 ms vs the model's 2482 ms$"):
        other.match_to(p)


def test_fsl_json_and_text_sidecars_fill_each_other_setting_by_setting(tmp_path):
    (tmp_path / "d.bval").write_text("0 1000 1000\n")
    (tmp_path / "d.smalldel").write_text("0 0.02 0.02\n")
    (tmp_path / "d.delta").write_text("0 0.04 0.04\n")
    (tmp_path / "d.json").write_text(json.dumps({"EchoTime": 0.08, "RepetitionTime": 3.349}))  # as dcm2niix writes
    p = read_fsl(tmp_path / "d.bval")  # δ, Δ from the text files; one TE and TR for every volume from the JSON
    np.testing.assert_allclose([p.small_delta, p.big_delta, p.te, p.tr], [[20.0] * 3, [40.0] * 3, [80.0] * 3,
                                                                           [3349.0] * 3])
    # a JSON without TR: the .tr file beside it gives it (a null RepetitionTime as well)
    for tr in ({}, {"RepetitionTime": None}):
        (tmp_path / "d.json").write_text(json.dumps({"PulseDuration": 0.02, "PulseSeparation": 0.04,
                                                     "EchoTime": 0.08, **tr}))
        (tmp_path / "d.tr").write_text("2.5\n")
        np.testing.assert_allclose(read_fsl(tmp_path / "d.bval").tr, 2500.0)
    (tmp_path / "d.tr").unlink()
    assert not read_fsl(tmp_path / "d.bval").has_tr
    # δ in neither: the error names the setting and both places looked in
    (tmp_path / "d.smalldel").unlink()
    (tmp_path / "d.json").write_text(json.dumps({"EchoTime": 0.08}))
    with pytest.raises(ProtocolError, match=r"no timings found for δ: d.json has no δ and there is no d.smalldel"):
        read_fsl(tmp_path / "d.bval")


def test_fsl_json_and_text_sidecars_that_disagree_warn_and_the_text_file_is_used(tmp_path):
    (tmp_path / "d.bval").write_text("0 1000 0 2000\n")
    (tmp_path / "d.smalldel").write_text("0 0.02 0 0.015\n")
    (tmp_path / "d.delta").write_text("0 0.04 0 0.035\n")
    (tmp_path / "d.te").write_text("0.05 0.05 0.07 0.07\n")  # two series merged into one DWI
    (tmp_path / "d.json").write_text(json.dumps({"EchoTime": 0.07, "PulseDuration": 0.02}))  # one series' values
    with pytest.warns(UserWarning, match=r"d.json and d.te disagree on TE \(volume 0: 70 vs 50 ms\); d.te is used"):
        p = read_fsl(tmp_path / "d.bval")
    assert p.te.tolist() == [50.0, 50.0, 70.0, 70.0] and p.small_delta[3] == pytest.approx(15.0)
    # a JSON the caller names is used
    with pytest.warns(UserWarning, match="d.json is used, d.te ignored"):
        p = read_fsl(tmp_path / "d.bval", timings=tmp_path / "d.json")
    np.testing.assert_allclose(p.te, 70.0)


def test_missing_tr_is_explained_by_where_the_protocol_came_from(tmp_path):
    from napari_rverdict.physics.models import get_model

    write_fsl(Protocol.innovate().with_tr(np.nan), tmp_path / "dwi", per_measurement=True)
    p = load_protocol(tmp_path / "dwi.bval")
    with pytest.raises(ProtocolError) as err:
        get_model("rverdict").check_protocol(p)
    msg = str(err.value)
    assert "dwi.bval: no dwi.tr file and no dwi.json with a RepetitionTime beside it; put the TR in dwi.tr" in msg
    assert "--tr MS (Python: tr=MS)" in msg
    assert "scheme" not in msg
    write_scheme(Protocol.innovate(), tmp_path / "x.scheme", write_tr=False)
    with pytest.warns(UserWarning):
        p = load_protocol(tmp_path / "x.scheme")
    with pytest.raises(ProtocolError, match="x.scheme: Camino scheme files carry no TR, and there is no x.tr beside"):
        get_model("rverdict").check_protocol(p)


def test_match_uses_the_matching_measurements_of_a_longer_protocol_and_refuses_a_shorter_one():
    ref = Protocol.innovate()
    extra_b0 = ref.subset([0])  # another series' b = 0: TE 40 ms, which the model does not have
    extra_b0 = Protocol(extra_b0.b, extra_b0.small_delta, extra_b0.big_delta, [40.0], extra_b0.tr)
    order = np.r_[3, 7, 0, 9, 1, 2, 4, 5, 6, 8]
    data = Protocol(np.r_[extra_b0.b, ref.b[order]], np.r_[extra_b0.small_delta, ref.small_delta[order]],
                    np.r_[extra_b0.big_delta, ref.big_delta[order]], np.r_[extra_b0.te, ref.te[order]],
                    np.r_[extra_b0.tr, ref.tr[order]])
    index, notes = data.match_to(ref)
    assert np.array_equal(data.b[index], ref.b) and np.array_equal(data.te[index], ref.te)
    assert 0 not in index and sorted(index) == list(range(1, 11))
    assert any("different order" in n for n in notes)
    assert any(n.startswith("the data's measurement 0 (b = 0 s/mm², TE = 40 ms") and "is not used" in n
               for n in notes), notes
    with pytest.raises(ProtocolError, match="the data has 9 measurements but the model's protocol has 10"):
        ref.subset(range(9)).match_to(ref)


@pytest.mark.parametrize("fmt", ["scheme", "fsl"])
def test_protocol_writers_refuse_existing_files_before_writing_any(tmp_path, fmt):
    from napari_rverdict.errors import InputError

    p = Protocol.innovate(direction_averaged=False)
    sidecar = tmp_path / ("p.tr" if fmt == "scheme" else "p.delta")  # one file of the set
    sidecar.write_text("mine\n")
    with pytest.raises(InputError, match=rf"{sidecar.name} exists; pass overwrite=True to replace it"):
        _write(fmt, p, tmp_path)
    assert [f.name for f in tmp_path.iterdir()] == [sidecar.name] and sidecar.read_text() == "mine\n"
    written = _write(fmt, p, tmp_path, overwrite=True)
    assert sidecar in written and sidecar.read_text() != "mine\n"
    assert load_protocol(written[0]) == p
