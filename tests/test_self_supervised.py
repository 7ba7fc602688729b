"""Self-supervised maps (ssVERDICT): recovery of simulated truth, bounded outputs, early stopping on held-out
voxels, Stop keeps the best weights, seeds, and the bad-input errors (library and CLI)."""

import threading

import numpy as np
import pytest

from napari_rverdict.data.noise import add_rician_noise
from napari_rverdict.data.phantom import make_phantom
from napari_rverdict.data.synth import noise_free_signals
from napari_rverdict.errors import InputError
from napari_rverdict.learn.config import ProgressKind
from napari_rverdict.maps.fit_quality import FIT_NRMSE
from napari_rverdict.maps.self_supervised import MIN_VOXELS, fit_self_supervised, fit_signals_self_supervised
from napari_rverdict.physics import Protocol, get_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ACQUIRED = Protocol.innovate(direction_averaged=False)


def _classic_volume(n, sigma, seed):
    """Classic VERDICT as acquired (20 volumes): each series T1/T2-weighted, S0 varying, Rician noise σ."""
    rng = np.random.default_rng(seed)
    truth = {"f_ic": rng.uniform(0.1, 0.7, n), "f_vasc": rng.uniform(0.01, 0.15, n), "R": rng.uniform(4, 12, n)}
    te, tr = np.asarray(ACQUIRED.te), np.asarray(ACQUIRED.tr)
    weight = (1000 * rng.uniform(0.7, 1.3, n)[:, None] * (1 - np.exp(-tr / rng.uniform(1200, 2500, n)[:, None]))
              * np.exp(-te / rng.uniform(60, 150, n)[:, None]))
    raw = add_rician_noise(noise_free_signals("verdict", truth, ACQUIRED) * weight, sigma, rng)
    return raw.reshape(n, 1, 1, -1).astype(np.float32), truth


@pytest.fixture(scope="module")
def classic():
    return _classic_volume(1000, sigma=5.0, seed=0)


@pytest.fixture(scope="module")
def classic_fit(classic):
    """At this high SNR (b = 0 SNR ≈ 40–140) no input dropout (the default's 0.05 trades accuracy here for
    robustness at low SNR; benchmarks/self_supervised.py)."""
    dwi, _ = classic
    records = []
    maps = fit_self_supervised("verdict", dwi, ACQUIRED, np.ones(dwi.shape[:3], bool), device="cpu", seed=0,
                               progress=records.append, dropout=0.0)
    return maps, records


def test_recovers_the_truth_better_than_a_constant(classic, classic_fit):
    """On f_ic and R the maps beat the best constant map (the truth's own mean, an oracle) by far."""
    (_, truth), (maps, _) = classic, classic_fit
    for name in ("f_ic", "R"):
        est = maps[name][:, 0, 0]
        rmse = np.sqrt(np.mean((est - truth[name]) ** 2))
        assert rmse < 0.5 * np.std(truth[name]), name
        assert np.corrcoef(est, truth[name])[0, 1] > 0.85
    q = maps[FIT_NRMSE]
    assert np.isfinite(q).all() and np.median(q) < 0.05  # σ = 5 on b = 0 ≈ 200–700: a few per cent


def test_maps_are_bounded_to_the_model(classic_fit):
    maps, _ = classic_fit
    f = [maps[k] for k in ("f_ic", "f_ees", "f_vasc")]
    assert all(((x >= 0) & (x <= 1)).all() for x in f)
    np.testing.assert_allclose(sum(f), 1.0, atol=1e-5)
    lo, hi = get_model("verdict").spec("R").low, get_model("verdict").spec("R").high
    assert ((maps["R"] >= lo) & (maps["R"] <= hi)).all()


def test_early_stopping_on_the_held_out_voxels(classic_fit):
    """Training ends ``patience`` epochs after the best held-out loss, and the maps come from that epoch."""
    _, records = classic_fit
    epochs = [r for r in records if r.kind is ProgressKind.EPOCH]
    assert records[-1].kind is ProgressKind.DONE and len(epochs) < 500
    val = [r.val_loss for r in epochs]
    best = int(np.argmin(val)) + 1
    assert records[-1].best_epoch == best and len(epochs) == best + 10
    assert all(r.train_loss is not None and r.n_epochs == 500 for r in epochs)


def test_stop_keeps_the_best_weights_and_seeds_repeat(classic):
    dwi, _ = classic
    raw = dwi.reshape(-1, dwi.shape[-1])
    stop = threading.Event()

    def progress(rec):
        if rec.kind is ProgressKind.EPOCH and rec.epoch == 4:
            stop.set()

    stopped = fit_signals_self_supervised("verdict", raw, ACQUIRED, device="cpu", seed=3, progress=progress,
                                          stop_event=stop)
    assert stopped.stopped and stopped.epochs_run == 5  # the epoch under way when Stop came is validated too
    best = stopped.best_epoch
    assert best == int(np.argmin(stopped.history["val_loss"])) + 1 and best <= 4
    again = fit_signals_self_supervised("verdict", raw, ACQUIRED, device="cpu", seed=3, epochs=best)
    for k in ("f_ic", "R"):  # the same seed retraced to the best epoch gives the same maps
        np.testing.assert_allclose(stopped.maps[k], again.maps[k], rtol=1e-5, atol=1e-6)
    other = fit_signals_self_supervised("verdict", raw, ACQUIRED, device="cpu", seed=4, epochs=best)
    assert not np.allclose(other.maps["f_ic"], again.maps["f_ic"])


def test_rician_loss_with_a_known_sigma(classic):
    dwi, truth = classic
    maps = fit_self_supervised("verdict", dwi, ACQUIRED, np.ones(dwi.shape[:3], bool), device="cpu", seed=0,
                               sigma=5.0, epochs=30)
    est = maps["f_ic"][:, 0, 0]
    assert np.sqrt(np.mean((est - truth["f_ic"]) ** 2)) < np.std(truth["f_ic"])
    with pytest.raises(InputError, match="sigma"):
        fit_self_supervised("verdict", dwi, ACQUIRED, device="cpu", sigma=-1.0)
    with pytest.raises(InputError, match="shape"):
        fit_self_supervised("verdict", dwi, ACQUIRED, device="cpu", sigma=np.ones((2, 2, 2)))


def test_rverdict_phantom_runs_bounded_and_needs_tr():
    ph = make_phantom((24, 24, 2), snr=35, seed=1)
    maps = fit_self_supervised("rverdict", ph.to_dwi(), mask=ph.mask, device="cpu", epochs=3)
    model = get_model("rverdict")
    for name in ("R", "T1", "T2_ic", "T2_vasc_ees", "D_ees"):
        lo, hi = model.spec(name).low, model.spec(name).high
        v = maps[name][ph.mask]
        assert ((v >= lo) & (v <= hi)).all(), name
    assert np.isnan(maps["f_ic"][~ph.mask]).all() and np.isnan(maps[FIT_NRMSE][~ph.mask]).all()
    no_tr = ph.protocol.with_tr(np.nan)
    with pytest.raises(InputError, match="TR"):
        fit_self_supervised("rverdict", ph.dwi, no_tr, ph.mask, device="cpu")


def test_bad_input():
    dwi, _ = _classic_volume(MIN_VOXELS + 20, sigma=5.0, seed=2)
    few = np.zeros(dwi.shape[:3], bool)
    few[:MIN_VOXELS - 1] = True
    with pytest.raises(InputError, match=f"at least {MIN_VOXELS}"):
        fit_self_supervised("verdict", dwi, ACQUIRED, few, device="cpu")
    every = np.ones(dwi.shape[:3], bool)
    with pytest.raises(InputError, match="measurements|volumes"):  # protocol mismatch, as for the other methods
        fit_self_supervised("verdict", dwi[..., :12], ACQUIRED, every, device="cpu")
    with pytest.raises(InputError, match="unknown self-supervised option"):
        fit_self_supervised("verdict", dwi, ACQUIRED, every, device="cpu", widht=3)
    with pytest.raises(InputError, match="dropout"):
        fit_self_supervised("verdict", dwi, ACQUIRED, every, device="cpu", dropout=1.0)
    with pytest.raises(InputError, match="epochs"):
        fit_self_supervised("verdict", dwi, ACQUIRED, every, device="cpu", epochs=0)
    with pytest.raises(InputError, match="device"):
        fit_self_supervised("verdict", dwi, ACQUIRED, every, device="tpu")
    for seed in (-1, 0.5, "0"):  # NumPy's own refusal was a traceback from inside the split
        with pytest.raises(InputError, match="seed must be a whole number"):
            fit_self_supervised("verdict", dwi, ACQUIRED, every, device="cpu", seed=seed)


# ---------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from napari_rverdict.cli import main

    d = tmp_path_factory.mktemp("ss") / "ph"
    assert main(["phantom", "--out", str(d), "--shape", "24", "24", "2", "--seed", "1"]) == 0
    return d


def _err(capsys):
    return capsys.readouterr().err.strip().splitlines()


def test_cli_fit_self_supervised(phantom_dir, tmp_path, capsys):
    from napari_rverdict.cli import main
    from napari_rverdict.data.map_files import load_maps

    out = tmp_path / "ss"
    assert main(["fit", str(phantom_dir / "dwi.nii.gz"), "--method", "self-supervised", "--epochs", "2",
                 "--mask", str(phantom_dir / "mask.nii.gz"), "--device", "cpu", "--seed", "1", "--out", str(out),
                 "--quiet"]) == 0
    assert "wrote 10 maps" in capsys.readouterr().out
    maps = load_maps(out)
    assert set(maps) == {*get_model("rverdict").map_names, FIT_NRMSE}
    # a noise map (σ per voxel, the DWI's units) for the Rician loss
    import nibabel as nib

    from napari_rverdict.data.map_files import save_map

    affine = nib.load(str(phantom_dir / "dwi.nii.gz")).affine
    save_map(np.full((24, 24, 2), 25.0), tmp_path / "sigma.nii.gz", affine, "sigma")
    assert main(["fit", str(phantom_dir / "dwi.nii.gz"), "--method", "self-supervised", "--epochs", "1",
                 "--mask", str(phantom_dir / "mask.nii.gz"), "--device", "cpu", "--sigma",
                 str(tmp_path / "sigma.nii.gz"), "--out", str(tmp_path / "ss_sigma"), "--quiet"]) == 0
    assert np.isfinite(load_maps(tmp_path / "ss_sigma")["f_ic"]).any()


def test_cli_bad_input_exits_2(phantom_dir, tmp_path, capsys):
    import nibabel as nib

    from napari_rverdict.cli import main
    from napari_rverdict.data.label_files import save_labels

    dwi = str(phantom_dir / "dwi.nii.gz")
    tiny = np.zeros((24, 24, 2))
    tiny[5:7, 5:7, 0] = 1
    save_labels(tiny, tmp_path / "tiny.nii.gz", nib.load(dwi).affine)
    cases = [
        (["--mask", str(tmp_path / "tiny.nii.gz")], f"at least {MIN_VOXELS}"),
        (["--sigma", "-2"], "--sigma"),
        (["--sigma", str(tmp_path / "nope.nii.gz")], "--sigma"),
        (["--starts", "2"], "--method nlls"),
    ]
    for extra, text in cases:
        out = tmp_path / "o"
        assert main(["fit", dwi, "--method", "self-supervised", "--device", "cpu", "--out", str(out), *extra]) == 2
        err = _err(capsys)
        assert len(err) == 1 and text in err[0], (extra, err)
        assert not out.exists()
    assert main(["fit", dwi, "--epochs", "3", "--out", str(tmp_path / "o")]) == 2  # NLLS takes no --epochs
    assert "self-supervised" in _err(capsys)[-1]


def test_sigma_auto_is_the_scanners_sigma_estimated_from_the_dwi(tmp_path):
    """sigma="auto" (the CLI's, the dock's and cohorts' default) finds the σ a scanner-like phantom was made with."""
    from napari_rverdict.data.phantom import make_phantom, save_phantom
    from napari_rverdict.maps.self_supervised import estimated_sigma

    ph = make_phantom((32, 32, 2), snr=20.0, seed=3, snr_reference="s0")
    save_phantom(ph, tmp_path / "ph")
    got = estimated_sigma("auto", tmp_path / "ph" / "dwi.nii.gz", mask=tmp_path / "ph" / "mask.nii.gz")
    assert got == pytest.approx(ph.sigma, rel=0.1)
    with pytest.raises(InputError, match="'auto'"):
        estimated_sigma("median", tmp_path / "ph" / "dwi.nii.gz")


def test_cli_sigma_values_reach_the_fit():
    """--sigma of `fit` and `cohort fit`: auto (default) → estimated, mse → the squared error, a number as given."""
    from napari_rverdict.cli.common import CliError, self_supervised_sigma

    assert self_supervised_sigma(None) == "auto" and self_supervised_sigma("auto") == "auto"
    assert self_supervised_sigma("mse") is None and self_supervised_sigma("25") == 25.0
    for bad in ("0", "-3", "inf", "loud"):
        with pytest.raises(CliError, match="--sigma"):
            self_supervised_sigma(bad)
