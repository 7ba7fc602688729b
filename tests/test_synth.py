"""Synthetic data: sampling, noise, normalisation, split, reproducibility and bad input."""

import numpy as np
import pytest
from napari_rverdict.cli import main as cli_main

from napari_rverdict import Protocol, get_model, simulate
from napari_rverdict.data.noise import add_rician_noise
from napari_rverdict.data.prior import resolve_ranges, sample_parameters


def test_mean_of_pure_rician_noise():
    sigma = 0.05
    x = add_rician_noise(np.zeros(400_000), sigma, rng=0)
    assert abs(x.mean() - sigma * np.sqrt(np.pi / 2)) < 3 * sigma * 0.66 / np.sqrt(x.size)
    # and Rician variance at zero signal: (2 − π/2) σ²
    assert abs(x.var() / sigma**2 - (2 - np.pi / 2)) < 0.01


def test_rician_at_high_snr_is_gaussian_around_the_signal():
    x = add_rician_noise(np.ones(200_000), 0.01, rng=1)
    assert abs(x.mean() - 1.0) < 1e-3 and abs(x.std() - 0.01) < 2e-4


@pytest.mark.parametrize("model", ["verdict", "rverdict"])
def test_simulate_shapes_split_and_normalisation(model):
    d = simulate(model, "innovate", n=1000, snr=35, seed=3)
    assert d.signals.shape == (1000, 10) and d.signals.dtype == np.float32
    assert len(d.train_index) == 800 and len(d.val_index) == 200
    assert not set(d.train_index) & set(d.val_index)
    assert d.targets().shape == (1000, len(get_model(model).estimated_names))
    if model == "verdict":
        np.testing.assert_allclose(d.signals[:, Protocol.innovate().is_b0], 1.0)  # per-series ratios
    else:
        np.testing.assert_allclose(d.signals.max(1), 1.0)
    for name, (lo, hi) in d.ranges.items():
        assert d.params[name].min() >= lo and d.params[name].max() <= hi
    fr = d.params["f_ic"] + d.params["f_ees"] + d.params["f_vasc"]
    np.testing.assert_allclose(fr, 1.0)


def test_noise_level_matches_snr():
    # classic VERDICT, all fractions fixed: the spread of the b = 90 ratio at high signal follows σ = 1/SNR on the
    # b = 0 and σ/√3 on b = 90, the average of its 3 acquired directions (Protocol.n_volumes)
    rng_ranges = {"f_ic": (0.48, 0.5), "f_vasc": (0.1, 0.11), "R": (5.0, 5.01)}
    d = simulate("verdict", "innovate", n=20_000, snr=50, ranges=rng_ranges, seed=0)
    assert d.protocol.n_volumes[:2].tolist() == [1, 3]
    ratio_sd = d.signals[:, 1].std()
    s = d.signals[:, 1].mean()
    expected = np.sqrt(1 / 3 + s**2) / 50  # ratio of two noisy measurements, first order
    assert abs(ratio_sd / expected - 1) < 0.05


def test_same_seed_same_data_different_seed_different():
    a = simulate("rverdict", n=500, seed=11)
    b = simulate("rverdict", n=500, seed=11)
    c = simulate("rverdict", n=500, seed=12)
    np.testing.assert_array_equal(a.signals, b.signals)
    np.testing.assert_array_equal(a.val_index, b.val_index)
    assert not np.array_equal(a.signals, c.signals)


def test_snr_range_per_sample():
    d = simulate("verdict", n=2000, snr=(15, 60), seed=0)
    assert d.snr.min() >= 15 and d.snr.max() <= 60 and d.snr.std() > 5


def test_fraction_samplers_differ_as_documented():
    m = get_model("rverdict")
    dir_ = sample_parameters(m, 50_000, fraction_sampler="dirichlet", rng=0)
    whole = {"f_ic": (0.0, 1.0), "f_ees": (0.0, 1.0)}
    tis = sample_parameters(m, 50_000, ranges=whole, fraction_sampler="tissue", rng=0)
    # Dirichlet(1,1,1): each fraction has mean 1/3; tissue: f_vasc = 1 − p1 ~ U(0.01, 0.99), p2 = f_ic / p1 uniform
    assert abs(dir_["f_vasc"].mean() - 1 / 3) < 0.01
    assert abs(tis["f_vasc"].mean() - 0.5) < 0.01
    p2 = tis["f_ic"] / (1 - tis["f_vasc"])
    assert abs(p2.mean() - 0.5) < 0.01 and p2.min() >= 0.01 and p2.max() <= 0.99
    # with the default ranges the draws with f_ic or f_ees < 0.01 are cut, as documented
    cut = sample_parameters(m, 50_000, fraction_sampler="tissue", rng=0)
    assert cut["f_ic"].min() >= 0.01 and 0.45 < cut["f_vasc"].mean() < 0.49
    with pytest.raises(ValueError, match="unknown fraction sampler"):
        sample_parameters(m, 10, fraction_sampler="beta")


def test_user_ranges_are_respected_and_validated():
    d = simulate("rverdict", n=500, ranges={"R": (5, 6), "f_ic": (0.4, 0.6)}, seed=0)
    assert d.params["R"].min() >= 5 and d.params["R"].max() <= 6
    assert d.params["f_ic"].min() >= 0.4 and d.params["f_ic"].max() <= 0.6
    m = get_model("rverdict")
    with pytest.raises(ValueError, match="low .* must be below high"):
        resolve_ranges(m, {"R": (6, 5)})
    with pytest.raises(ValueError, match="unknown parameter 'Rad'"):
        resolve_ranges(m, {"Rad": (1, 2)})
    with pytest.raises(ValueError, match="physical limits"):
        resolve_ranges(m, {"f_ic": (0.2, 1.3)})
    with pytest.raises(ValueError, match="finite"):
        resolve_ranges(m, {"T1": (np.nan, 100)})
    with pytest.raises(ValueError, match="almost no room"):
        simulate("rverdict", n=100, ranges={"f_ic": (0.9, 0.99), "f_ees": (0.9, 0.99)}, seed=0)


@pytest.mark.parametrize("bad", [dict(n=1), dict(snr=0), dict(snr=(60, 15)), dict(snr="high"), dict(model="ivim"),
                                 dict(protocol="nope")])
def test_bad_simulate_arguments(bad):
    kwargs = dict(model="verdict", n=100, snr=35)
    kwargs.update(bad)
    with pytest.raises(ValueError):
        simulate(**kwargs)


def test_snr_as_text_is_read_as_the_command_line_reads_it():
    text = simulate("verdict", n=300, snr="15-60", seed=0)
    pair = simulate("verdict", n=300, snr=(15, 60), seed=0)
    assert text.snr_setting == (15.0, 60.0) and text.noise_settings()["snr"] == (15.0, 60.0)
    np.testing.assert_array_equal(text.signals, pair.signals)
    assert simulate("verdict", n=50, snr="35", seed=0).snr_setting == 35.0


@pytest.mark.parametrize("bad, match", [(dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(seed="0"), "seed"),
                                        (dict(snr=True), "SNR"), (dict(snr="high"), "SNR"), (dict(snr="60-15"), "SNR")])
def test_bad_seed_or_snr_is_one_input_error(bad, match):
    from napari_rverdict.data.synth import effective_snr
    from napari_rverdict.errors import InputError

    with pytest.raises(InputError, match=match):
        simulate("verdict", n=100, **bad)
    with pytest.raises(InputError, match=match):
        effective_snr("verdict", n=100, **bad)


def test_cli_simulate_and_one_line_errors(tmp_path, capsys):
    out = tmp_path / "sim.npz"
    assert cli_main(["simulate", "--model", "verdict", "--n", "200", "--snr", "20-40", "--out", str(out)]) == 0
    z = np.load(out)
    assert z["signals"].shape == (200, 10) and z["snr"].min() >= 20
    assert cli_main(["simulate", "--n", "200", "--range", "R=9,3", "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "low (9) must be below high (3)" in err[0]
    assert cli_main(["simulate", "--n", "200", "--range", "R:9", "--out", str(out), "--overwrite"]) == 2


@pytest.mark.parametrize("text, expected", [("35", 35.0), ("15-60", (15.0, 60.0)), ("15,60", (15.0, 60.0)),
                                            (" 2.5e1 ", 25.0), ("15–60", (15.0, 60.0)), ("15 — 60", (15.0, 60.0))])
def test_parse_snr_accepts_numbers_and_ranges(text, expected):
    from napari_rverdict.data.noise import parse_snr

    assert parse_snr(text) == expected


@pytest.mark.parametrize("text", ["-3", "3-", "60-15", "0", "abc", "1-2-3", "", "20-20"])
def test_parse_snr_refuses_negative_reversed_and_garbled(text):
    from napari_rverdict.data.noise import parse_snr
    from napari_rverdict.errors import InputError

    with pytest.raises(InputError, match="SNR"):
        parse_snr(text)


def test_cli_warnings_are_one_line_each_and_errors_stay_one_line(tmp_path, capsys):
    from napari_rverdict.physics.protocol_files import write_scheme

    scheme = write_scheme(Protocol.innovate(), tmp_path / "acq.scheme", write_tr=False)[0]
    # classic VERDICT does not need TR: the command succeeds and says once, in one line, that TR is unknown
    assert cli_main(["simulate", "--model", "verdict", "--protocol", str(scheme), "--n", "100",
                     "--out", str(tmp_path / "v.npz")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and "TR" in err[0]
    # rVERDICT needs TR: exactly one error line, the warning is not printed on top of it
    assert cli_main(["simulate", "--protocol", str(scheme), "--n", "100", "--out", str(tmp_path / "r.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and "TR" in err[0]


def test_huge_requests_are_refused_before_allocating(tmp_path, capsys):
    """Issue 11: `rverdict simulate --n 10**12` and a huge dictionary say how much memory they would need."""
    from napari_rverdict.errors import InputError
    from napari_rverdict.evaluate.posterior import build_dictionary

    with pytest.raises(InputError, match="memory"):
        simulate("rverdict", n=10**12)
    with pytest.raises(InputError, match="memory"):
        build_dictionary("rverdict", n=10**12)
    assert cli_main(["simulate", "--n", str(10**12), "--out", str(tmp_path / "big.npz")]) == 2
    assert "GiB" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_save_refuses_an_existing_file_unless_overwrite(tmp_path):
    from napari_rverdict.errors import InputError

    data = simulate("verdict", n=50, seed=0)
    path = tmp_path / "sim.npz"
    path.write_bytes(b"someone's data")
    with pytest.raises(InputError, match=r"sim\.npz exists; pass overwrite=True to replace it"):
        data.save(tmp_path / "sim")  # the name it would get (.npz added) is the one checked
    assert path.read_bytes() == b"someone's data" and [p.name for p in tmp_path.iterdir()] == ["sim.npz"]
    assert data.save(path, overwrite=True) == path
    np.testing.assert_array_equal(np.load(path)["signals"], data.signals)
