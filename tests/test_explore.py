"""The Explore dock's library: signal curves and their compartments against closed forms, the Rician noise band
against its moments and a Monte-Carlo, voxel QA on a voxel made from known parameters, protocol tables (checks as
typed, rows ↔ Protocol, save / read round trip) and the two-protocol comparison."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from napari_rverdict.data.noise import add_rician_noise
from napari_rverdict.errors import InputError
from napari_rverdict.evaluate.explore import (
    model_for_maps,
    noise_band,
    noise_sigma,
    rician_moments,
    signal_curves,
    voxel_qa,
)
from napari_rverdict.evaluate.protocol_design import (
    check_rows,
    compare_protocols,
    protocol_from_rows,
    protocol_rows,
    save_protocol,
)
from napari_rverdict.physics.models import get_model
from napari_rverdict.physics.protocol import Protocol
from napari_rverdict.physics.protocol_files import load_protocol

RV = {"f_ic": 0.5, "f_ees": 0.3, "R": 8.0, "T2_vasc_ees": 300.0, "T2_ic": 60.0, "T1": 1500.0, "D_ees": 1.7,
      "S0": 0.8}
CLASSIC = {"f_ic": 0.45, "f_vasc": 0.15, "R": 7.0}


# ---------------------------------------------------------------------- curves
@pytest.mark.parametrize("name, params", [("rverdict", RV), ("verdict", CLASSIC)])
def test_compartments_sum_to_the_total_and_match_the_model(name, params):
    model = get_model(name)
    c = signal_curves(model, params, "innovate")
    np.testing.assert_allclose(sum(c.compartments.values()), c.total, rtol=1e-12, atol=1e-14)
    for s in c.series:
        np.testing.assert_allclose(sum(s.compartments.values()), s.total, rtol=1e-12, atol=1e-14)
    p = {k: np.array([v]) for k, v in c.params.items()}
    direct = model.normalise(model.signal(p, load_protocol("innovate")), load_protocol("innovate"))[0]
    np.testing.assert_allclose(c.total, direct, rtol=1e-12)
    # each series' sweep passes through that series' measurements (same δ, Δ, TE, TR at the measured b)
    for s in c.series:
        for i in s.index:
            np.testing.assert_allclose(np.interp(c.b[i], s.b, s.total), c.total[i], rtol=1e-9)


def test_b0_is_the_sum_of_fractions_times_relaxation():
    c = signal_curves("rverdict", RV, "innovate")
    f_vasc = 1 - RV["f_ic"] - RV["f_ees"]
    for s in c.series:
        t1w = RV["S0"] * (1 - np.exp(-s.tr / RV["T1"]))
        ic = RV["f_ic"] * np.exp(-s.te / RV["T2_ic"]) * t1w
        ve = np.exp(-s.te / RV["T2_vasc_ees"]) * t1w
        assert s.b[0] == 0
        np.testing.assert_allclose(s.raw[0], ic + (RV["f_ees"] + f_vasc) * ve, rtol=1e-12)
        np.testing.assert_allclose(s.compartments["f_ic"][0] * s.scale, ic, rtol=1e-12)
        np.testing.assert_allclose(s.compartments["f_vasc"][0] * s.scale, f_vasc * ve, rtol=1e-12)
    # rVERDICT is normalised by the brightest measurement: the largest normalised value is exactly 1
    assert c.total.max() == pytest.approx(1.0, abs=1e-12)


def test_classic_compartments_are_the_closed_forms():
    c = signal_curves("verdict", CLASSIC, "innovate")
    f_ees = 1 - CLASSIC["f_ic"] - CLASSIC["f_vasc"]
    assert c.fractions["f_ees"] == pytest.approx(f_ees)
    for s in c.series:
        b = s.b * 1e-3  # ms/µm²
        np.testing.assert_allclose(s.compartments["f_ees"], f_ees * np.exp(-2.0 * b), rtol=1e-12)
        x = 8.0 * b[1:]
        astro = np.sqrt(np.pi) * erf(np.sqrt(x)) / (2 * np.sqrt(x))
        np.testing.assert_allclose(s.compartments["f_vasc"][1:], CLASSIC["f_vasc"] * astro, rtol=1e-10)
        assert s.total[0] == pytest.approx(1.0)  # each series divided by its own b = 0
    # a vanishing cell radius does not attenuate: the intracellular part stays at f_ic
    tiny = signal_curves("verdict", dict(CLASSIC, R=0.01), "innovate")
    for s in tiny.series:
        np.testing.assert_allclose(s.compartments["f_ic"], CLASSIC["f_ic"], rtol=1e-6)


def test_fractions_above_one_are_renormalised_with_a_note_and_bad_values_refused():
    c = signal_curves("rverdict", dict(RV, f_ic=0.8, f_ees=0.6), "innovate")
    assert c.fractions["f_vasc"] == 0 and sum(c.fractions.values()) == pytest.approx(1.0)
    assert c.notes and "> 1" in c.notes[0]
    with pytest.raises(InputError, match="T1"):
        signal_curves("rverdict", {k: v for k, v in RV.items() if k != "T1"}, "innovate")
    with pytest.raises(InputError, match="physical limits"):
        signal_curves("rverdict", dict(RV, R=-1.0), "innovate")
    with pytest.raises(InputError, match="TR"):
        signal_curves("rverdict", RV, load_protocol("innovate").with_tr(np.nan))


# ---------------------------------------------------------------------- noise
def test_rician_moments_closed_forms():
    sigma = 0.1
    mean, sd = rician_moments(0.0, sigma)  # Rayleigh
    assert mean == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=1e-9)
    assert sd == pytest.approx(sigma * np.sqrt(2 - np.pi / 2), rel=1e-9)
    from scipy.stats import rice

    nu = np.array([0.3, 1.0, 3.0, 10.0])  # against SciPy's own Rice distribution where it is finite
    m, v = rice.stats(nu, scale=1.0, moments="mv")
    np.testing.assert_allclose(rician_moments(nu, 1.0), (m, np.sqrt(v)), rtol=1e-10)
    mean, sd = rician_moments(1.0, 1e-3)  # high SNR: Gaussian
    assert mean == pytest.approx(1.0, rel=1e-6) and sd == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize("reference", ["s0", "peak"])
def test_noise_band_width_matches_a_monte_carlo(reference):
    c = signal_curves("rverdict", RV, "innovate")
    band = noise_band(c, 20.0, reference, k=1.0)
    sigma = 1 / 20.0 if reference == "s0" else c.raw.max() / 20.0
    assert band.sigma == pytest.approx(sigma)
    noisy = add_rician_noise(np.broadcast_to(c.raw, (200_000, c.raw.size)), sigma, rng=0)
    np.testing.assert_allclose((band.high - band.low) / 2 * c.scale, noisy.std(0), rtol=0.01)
    np.testing.assert_allclose(band.mean * c.scale, noisy.mean(0), rtol=0.002)
    for (mean, low, high), s in zip(band.series, c.series):
        assert np.all(low < s.total) and np.all(high > s.total)


def test_noise_sigma_rules():
    raw = np.array([[0.5, 0.25, 0.1]])
    assert noise_sigma(raw, 10, "s0")[0, 0] == pytest.approx(0.1)  # σ fixed where S0 = 1: darker voxel, lower SNR
    assert noise_sigma(raw, 10, "peak")[0, 0] == pytest.approx(0.05)  # every voxel at SNR 10 at its peak
    with pytest.raises(InputError, match="SNR reference"):
        noise_sigma(raw, 10, "mean")
    with pytest.raises(InputError, match="SNR"):
        noise_sigma(raw, -1, "s0")


# ---------------------------------------------------------------------- voxel QA
def test_voxel_qa_predicts_a_noise_free_voxel_from_its_own_maps():
    model = get_model("rverdict")
    protocol = load_protocol("innovate-20")  # 20 volumes: direction-averaged inside
    p = {k: np.array([v]) for k, v in RV.items()}
    raw = 1234.0 * model.signal(p, protocol)[0]
    maps = model.derived_maps({k: v for k, v in p.items()})
    values = {k: float(maps[k][0]) for k in model.map_names}
    qa = voxel_qa(raw, protocol, maps=values)
    assert qa.model.name == "rverdict" and len(qa.protocol) == 10
    assert qa.measured.max() == pytest.approx(1.0)
    np.testing.assert_allclose(qa.predicted, qa.measured, rtol=1e-10)
    assert qa.rmse < 1e-10
    nan = voxel_qa(raw, protocol, maps=dict(values, R=float("nan")))
    assert nan.predicted is None and "not mapped" in nan.notes[0]
    bare = voxel_qa(raw, protocol)
    assert bare.predicted is None and np.isnan(bare.rmse)
    with pytest.raises(InputError, match="volumes"):
        voxel_qa(raw[:5], protocol)


def test_model_for_maps():
    assert model_for_maps(["f_ic", "f_ees", "f_vasc", "R", "D_ees", "T1", "T2_ic", "T2_vasc_ees"]).name == "rverdict"
    assert model_for_maps(["f_ic", "f_vasc", "R", "cellularity"]).name == "verdict"
    with pytest.raises(InputError, match="not the maps"):
        model_for_maps(["R"])


# ---------------------------------------------------------------------- protocol tables
def test_rows_round_trip_and_validation_messages():
    innovate = load_protocol("innovate")
    rows = protocol_rows(innovate)
    assert protocol_from_rows(rows) == innovate
    text = [[f"{v:g}" for v in r] for r in rows]
    assert check_rows(text, "rverdict") == []

    def problems(row, model=None):
        return check_rows([row], model)

    (p,) = problems(["1000", "40", "30", "80", "3000"])
    assert (p.row, p.column) == (0, 1) and "δ ≤ Δ" in p.message
    (p,) = problems(["x", "10", "30", "80", "3000"])
    assert p.column == 0 and "not a number" in p.message
    (p,) = problems(["-5", "10", "30", "80", "3000"])
    assert p.column == 0 and "≥ 0" in p.message
    (p,) = problems(["1000", "10", "30", "0.08", "3000"])
    assert p.column == 3 and "seconds" in p.message
    (p,) = problems(["1000", "10", "30", "80", "3"])
    assert p.column == 4 and "seconds" in p.message
    (p,) = problems(["1.5", "10", "30", "80", "3000"])
    assert p.column == 0 and "ms/µm²" in p.message
    low_b = [["0", "10", "30", "80", "3000"], ["30", "10", "30", "80", "3000"], ["1000", "10", "30", "80", "3000"]]
    assert check_rows(low_b, "rverdict") == []  # b = 30 is a low b, not a unit error, next to b = 1000
    (p,) = problems(["1000", "10", "30", "80", ""], "rverdict")  # empty TR = unknown: rVERDICT needs it
    assert p.row is None and "TR" in p.message
    (p,) = problems(["1000", "10", "30", "80", ""], "verdict")  # a classic series needs its own b = 0
    assert "b = 0" in p.message
    assert check_rows([]) and "no measurements" in check_rows([])[0].message
    with pytest.raises(InputError, match="row 1"):
        protocol_from_rows([["1000", "40", "30", "80", "3000"]])


@pytest.mark.parametrize("suffix", [".scheme", ".bval"])
def test_save_and_read_back(tmp_path, suffix):
    rows = protocol_rows(load_protocol("innovate")) + [(2500.0, 18.9, 38.8, 80.0, 3349.0)]
    protocol = protocol_from_rows(rows)
    path = tmp_path / f"edited{suffix}"
    written = save_protocol(protocol, path)
    assert path in written and all(p.exists() for p in written)
    assert {p.suffix for p in written} == ({".scheme", ".tr"} if suffix == ".scheme" else
                                           {".bval", ".bvec", ".delta", ".smalldel", ".te", ".tr"})
    assert len(load_protocol(path)) == int(protocol.n_volumes.sum())  # a row per acquired volume
    back = load_protocol(path, direction_averaged=True)
    np.testing.assert_allclose(back.b, protocol.b, rtol=1e-6)
    np.testing.assert_array_equal(back.n_volumes, protocol.n_volumes)
    np.testing.assert_allclose(np.c_[back.small_delta, back.big_delta, back.te, back.tr],
                               np.c_[protocol.small_delta, protocol.big_delta, protocol.te, protocol.tr], rtol=1e-6)
    before = {p: p.read_bytes() for p in written}
    with pytest.raises(InputError, match="exist; pass overwrite=True"):  # every existing file named in one error
        save_protocol(protocol, path)
    assert {p: p.read_bytes() for p in written} == before
    save_protocol(protocol, path, overwrite=True)
    with pytest.raises(InputError, match=r"\.scheme or a \.bval"):
        save_protocol(protocol, tmp_path / "edited.txt")
    no_tr = protocol_from_rows([r[:4] + ("",) for r in rows])  # TR unknown: no .tr written…
    assert not any(p.suffix == ".tr" for p in save_protocol(no_tr, tmp_path / f"no_tr{suffix}"))
    with pytest.raises(InputError, match="TR"):  # …and a stale one beside the target is refused, not kept
        save_protocol(no_tr, path, overwrite=True)


# ---------------------------------------------------------------------- comparison
@pytest.mark.parametrize("name", ["rverdict", "verdict"])
def test_adding_a_b_value_never_raises_the_crlb(name, tmp_path):
    a = load_protocol("innovate")
    rows = protocol_rows(a) + [(2500.0, 18.9, 38.8, 80.0, 3349.0)]
    b = protocol_from_rows(rows, name="INNOVATE + b 2500")
    cmp = compare_protocols(name, a, b, 35.0, n_test=20, n_dictionary=2000, seed=1)
    assert cmp.maps == list(get_model(name).map_names)
    for m, r in cmp.rows.items():
        assert r["crlb_b"] <= r["crlb_a"] * (1 + 1e-9), m
        assert np.isfinite(r["bayes_a"]) and np.isfinite(r["bayes_b"])
    # a protocol compared with itself gives the same numbers (same seed, same draws)
    same = compare_protocols(name, a, a, 35.0, n_test=20, n_dictionary=2000, seed=1)
    for r in same.rows.values():
        assert r["crlb_a"] == r["crlb_b"] and r["bayes_a"] == pytest.approx(r["bayes_b"], rel=1e-6)
    table = cmp.format_table()
    assert "INNOVATE + b 2500" in table and "f_ic" in table
    csv = cmp.to_csv(tmp_path / "cmp.csv").read_text().splitlines()
    assert csv[0].startswith("map,unit,sqrt_crlb_a") and len(csv) == 1 + len(cmp.maps)
    (tmp_path / "cmp.csv").write_text("kept")
    with pytest.raises(InputError, match=r"cmp\.csv exists; pass overwrite=True to replace it"):
        cmp.to_csv(tmp_path / "cmp.csv")
    assert (tmp_path / "cmp.csv").read_text() == "kept"
    assert cmp.to_csv(tmp_path / "cmp.csv", overwrite=True).read_text().splitlines() == csv


def test_protocol_object_passes_through():
    p = Protocol([0, 1000], [10, 10], [30, 30], [80, 80], [3000, 3000])
    assert len(signal_curves("rverdict", RV, p).series) == 1


# ---------------------------------------------------------------------- CLI
def test_cli_compare_prints_both_protocols_and_refuses_bad_input(tmp_path, capsys):
    from napari_rverdict.cli import main

    rows = protocol_rows(load_protocol("innovate")) + [(2500.0, 18.9, 38.8, 80.0, 3349.0)]
    b = tmp_path / "plus2500.scheme"
    save_protocol(protocol_from_rows(rows), b)
    out_csv = tmp_path / "cmp.csv"
    args = ["protocol-report", "--compare", "innovate", str(b), "--n-test", "10", "--n-dictionary", "1000"]
    assert main(args + ["--csv", str(out_csv)]) == 0
    out = capsys.readouterr().out
    # the saved scheme has a row per acquired volume (3 per b > 0), read back direction-averaged: 11 measurements
    assert "A = INNOVATE" in out and "B = plus2500.scheme" in out and "(11 measurements)" in out and "√CRLB B" in out
    assert out_csv.exists()
    before = out_csv.read_bytes()
    assert main(args + ["--csv", str(out_csv)]) == 2  # exists, checked before any work
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and out_csv.read_bytes() == before
    assert main(["protocol-report", "--compare", "innovate", str(tmp_path / "nope.scheme")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # needs two: an argparse usage error
        main(["protocol-report", "--compare", "innovate"])
    assert exc.value.code == 2


def test_a_repeated_row_counts_as_a_second_measurement():
    a = load_protocol("innovate")
    b = protocol_from_rows(protocol_rows(a) + [protocol_rows(a)[5]])  # b = 1500 once more
    cmp = compare_protocols("verdict", a, b, 35.0, n_test=5, n_dictionary=500)
    assert cmp.b.n_measurements == 11  # not direction-averaged away
    assert cmp.rows["R"]["crlb_b"] < cmp.rows["R"]["crlb_a"]


@pytest.mark.parametrize("suffix", [".scheme", ".bval"])
def test_saved_protocols_keep_their_acquired_volumes(tmp_path, suffix):
    """A direction-averaged INNOVATE (3 volumes per b > 0) saved and read back direction-averaged keeps its counts,
    so its noise (σ/√3 on the DW measurements) is the same after the round trip."""
    from napari_rverdict.physics.protocol_files import load_protocol

    innovate = load_protocol("innovate")
    assert innovate.n_volumes.max() == 3
    save_protocol(innovate, tmp_path / f"p{suffix}")
    back = load_protocol(tmp_path / f"p{suffix}", direction_averaged=True)
    order = np.lexsort((innovate.b, innovate.te))
    again = np.lexsort((back.b, back.te))
    np.testing.assert_array_equal(back.n_volumes[again], innovate.n_volumes[order])
    np.testing.assert_allclose(back.b[again], innovate.b[order])
