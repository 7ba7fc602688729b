"""``rverdict train`` / ``rverdict evaluate`` in-process through cli.main: tiny runs, Ctrl-C, one-line errors."""

import signal

import numpy as np
import pytest
import torch
from napari_rverdict.cli import main

from napari_rverdict.learn import train as train_mod
from napari_rverdict.learn.bundle import load_bundle
from napari_rverdict.physics.protocol import Protocol
from napari_rverdict.physics.protocol_files import write_scheme

TINY = ["--n", "400", "--epochs", "2", "--seed", "0", "--device", "cpu"]


def _one_error_line(capsys, rc, *needles):
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("rverdict ")
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "m.pt"
    rc = main(["train", "--model", "rverdict", "--protocol", "innovate", "--snr", "20-50", *TINY,
               "--range", "R=1,12", "--fraction-sampler", "tissue", "--out", str(path)])
    assert rc == 0
    return path


def test_train_writes_bundle(trained):
    b = load_bundle(trained)
    assert b.model.name == "rverdict" and b.net_name == "mlp"
    assert b.snr == (20.0, 50.0) and b.fraction_sampler == "tissue" and b.ranges["R"] == (1.0, 12.0)
    assert b.protocol == Protocol.innovate() and len(b.history["val_loss"]) == 2
    assert b.train_config["epochs"] == 2 and b.train_config["device"] == "cpu"
    maps = b.predict_signals(np.random.default_rng(0).uniform(100, 200, (3, len(b.protocol))))
    assert list(maps) == list(b.map_names) and all(v.shape == (3,) for v in maps.values())


def test_train_progress_and_summary(tmp_path, capsys):
    rc = main(["train", "--model", "verdict", "--net", "resnetreg", "--depth", "11", "--width", "8",
               *TINY, "--out", str(tmp_path / "v.pt")])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "2 epoch(s) (all epochs)" in out and str(tmp_path / "v.pt") in out
    # the per-epoch progress bar shows the losses
    assert "resnetreg on cpu" in err and "train " in err and "val " in err and "2/2" in err
    b = load_bundle(tmp_path / "v.pt")
    assert (b.model.name, b.net_name, b.depth, b.width) == ("verdict", "resnetreg", 11, 8)


@pytest.mark.parametrize("write_tr", [True, False])
def test_train_with_scheme_file(tmp_path, write_tr):
    proto = Protocol.innovate()
    scheme = write_scheme(proto, tmp_path / "acq.scheme", write_tr=write_tr)[0]
    extra = [] if write_tr else ["--tr", "3000"]
    out = tmp_path / "s.pt"
    rc = main(["train", "--protocol", str(scheme), *extra, "--net", "resnetreg-st", "--depth", "11",
               "--width", "8", *TINY, "--quiet", "--out", str(out)])
    assert rc == 0
    b = load_bundle(out)
    assert len(b.protocol) == len(proto) and b.net_name == "resnetreg-st"
    np.testing.assert_allclose(b.protocol.b, proto.b)
    if not write_tr:
        np.testing.assert_allclose(b.protocol.tr, 3000.0)


def test_scheme_without_tr_is_one_line_error(tmp_path, capsys):
    scheme = write_scheme(Protocol.innovate(), tmp_path / "acq.scheme", write_tr=False)[0]
    rc = main(["train", "--protocol", str(scheme), *TINY, "--out", str(tmp_path / "x.pt")])
    _one_error_line(capsys, rc, "TR")
    assert not (tmp_path / "x.pt").exists()


def test_ctrl_c_saves_best_weights(tmp_path, capsys, monkeypatch):
    real = train_mod.iter_training

    def interrupted(data, config, stop_event=None):
        for rec in real(data, config, stop_event):
            yield rec
            if rec.kind == "epoch" and rec.epoch == 2:
                signal.raise_signal(signal.SIGINT)  # what Ctrl-C does, delivered to the CLI's handler

    monkeypatch.setattr(train_mod, "iter_training", interrupted)
    out_path = tmp_path / "c.pt"
    rc = main(["train", "--n", "2000", "--epochs", "50", "--device", "cpu", "--out", str(out_path)])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "stopped by Ctrl-C" in out and "stopping after this batch" in err
    b = load_bundle(out_path)
    h = b.history
    assert len(h["val_loss"]) == 2 and b.extra["stopped"]
    assert h["best_epoch"] == int(np.argmin(h["val_loss"])) + 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_ctrl_c_before_any_step_writes_nothing(tmp_path, capsys, monkeypatch):
    real = train_mod.iter_training

    def interrupted_at_once(data, config, stop_event=None):
        signal.raise_signal(signal.SIGINT)
        yield from real(data, config, stop_event)

    monkeypatch.setattr(train_mod, "iter_training", interrupted_at_once)
    rc = main(["train", *TINY, "--out", str(tmp_path / "none.pt")])
    _, err = capsys.readouterr()
    assert rc == 130 and "no bundle written" in err
    assert not (tmp_path / "none.pt").exists()


def test_evaluate_prints_table(trained, tmp_path, capsys):
    rc = main(["evaluate", str(trained), "--n", "300", "--n-crlb", "20", "--snr", "35",
               "--csv", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "t.png")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    assert "RMSE" in out and "√CRLB" in out and "MAPE" in out and "300 fresh synthetic signals at SNR 35" in out
    for name in ("f_ic", "f_ees", "R", "T2_vasc_ees", "T2_ic", "T1", "D_ees", "f_vasc"):
        row = next(ln for ln in lines if ln.startswith(name + " "))
        values = [float(x) for x in row.split()[-5:]]  # RMSE, bias, MAPE, r, √CRLB
        assert np.isfinite(values).all() and values[0] > 0 and values[4] > 0
    assert (tmp_path / "t.csv").read_text().startswith("parameter,unit,rmse")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, needles", [
    (["--net", "cnn"], ["unknown network 'cnn'", "resnetreg-st"]),
    (["--lr", "-1"], ["lr must be a positive number"]),
    (["--model", "adc"], ["adc"]),
    (["--device", "tpu"], ["unknown device 'tpu'"]),
    (["--range", "R=12,1"], ["low (12) must be below high (1)"]),
    (["--range", "Q=1,2"], ["unknown parameter 'Q'"]),
    (["--fraction-sampler", "beta"], ["unknown fraction sampler 'beta'"]),
    (["--snr", "lots"], ["--snr expects"]),
    (["--snr", "-5"], ["--snr", "positive"]),
    (["--snr", "0"], ["--snr must be positive"]),
    (["--snr", "60-15"], ["--snr range needs LOW < HIGH"]),
    (["--n", "5"], ["--n must be at least 10"]),
    (["--batch", "1"], ["batch_size"]),
    (["--lr", "nan"], ["lr must be a positive number"]),
    (["--weight-decay", "inf"], ["weight_decay must be a finite"]),
    (["--protocol", "nowhere.scheme"], ["nowhere.scheme"]),
])
def test_train_bad_input_one_line(tmp_path, capsys, args, needles):
    out = tmp_path / "bad.pt"
    rc = main(["train", *TINY, *args, "--out", str(out)])
    _one_error_line(capsys, rc, *needles)
    assert not out.exists()


def test_evaluate_bad_files_one_line(tmp_path, capsys):
    rc = main(["evaluate", str(tmp_path / "missing.pt")])
    _one_error_line(capsys, rc, "does not exist")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    rc = main(["evaluate", str(tmp_path / "plain.pt")])
    _one_error_line(capsys, rc, "not a napari-rverdict model bundle")
    (tmp_path / "notes.pt").write_text("not a torch file")
    rc = main(["evaluate", str(tmp_path / "notes.pt")])
    _one_error_line(capsys, rc, "not a napari-rverdict model bundle")


def _no_work(monkeypatch):
    import napari_rverdict.data.synth as synth_mod

    def boom(*a, **k):
        raise AssertionError("simulated or trained although --out was refused")

    monkeypatch.setattr(synth_mod, "simulate", boom)
    monkeypatch.setattr(train_mod, "iter_training", boom)


@pytest.mark.parametrize("kind", ["folder", "empty", "existing"])
def test_train_out_checked_before_training(tmp_path, capsys, monkeypatch, kind):
    _no_work(monkeypatch)
    existing = tmp_path / "old.pt"
    existing.write_bytes(b"precious bytes")
    out, needles = {"folder": (str(tmp_path), ["folder"]), "empty": ("", ["empty"]),
                    "existing": (str(existing), ["exists", "--overwrite"])}[kind]
    rc = main(["train", *TINY, "--out", out])
    _one_error_line(capsys, rc, *needles)
    assert existing.read_bytes() == b"precious bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pt"]


def test_train_overwrite_replaces(tmp_path, capsys):
    out = tmp_path / "m.pt"
    out.write_bytes(b"old")
    rc = main(["train", *TINY, "--quiet", "--overwrite", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert load_bundle(out).net_name == "mlp"


def test_train_diverged_no_bundle(tmp_path, capsys):
    out = tmp_path / "nan.pt"
    rc = main(["train", *TINY, "--quiet", "--lr", "1e6", "--out", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("rverdict train") and "diverged at epoch 1" in lines[-1], err
    assert "lower learning rate" in lines[-1] and lines[:-1] == [ln for ln in lines[:-1]
                                                                    if "simulating" in ln or "effective SNR" in ln]
    assert not out.exists()


@pytest.fixture(scope="module")
def dwi_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("inp")
    assert main(["phantom", "--out", str(d), "--shape", "8", "8", "1", "--seed", "0", "--overwrite"]) == 0
    return d


@pytest.mark.parametrize("options, out", [
    (["--snr-from", "{d}/dwi.nii.gz"], "dwi.nii.gz"),  # the DWI whose noise is matched
    (["--snr-from", "{d}/dwi.nii.gz"], "dwi.te"),  # its protocol sidecar
    (["--snr-from", "{d}/dwi.nii.gz", "--mask", "{d}/mask.nii.gz"], "mask.nii.gz"),
    (["--protocol", "{d}/dwi.bval"], "dwi.bval"),
    (["--protocol", "{d}/dwi.bval"], "dwi.delta"),
])
def test_train_never_replaces_an_input(dwi_folder, capsys, options, out):
    before = {p.name: p.read_bytes() for p in dwi_folder.iterdir() if p.is_file()}
    args = [o.format(d=dwi_folder) for o in options] + ["--n", "200", "--epochs", "1", "--quiet"]
    _one_error_line(capsys, main(["train", *args, "--out", str(dwi_folder / out), "--overwrite"]),
                    "is one of the inputs")
    assert {p.name: p.read_bytes() for p in dwi_folder.iterdir() if p.is_file()} == before


def test_evaluate_refuses_one_file_for_csv_and_plot(trained, tmp_path, capsys):
    same = str(tmp_path / "same.png")
    _one_error_line(capsys, main(["evaluate", str(trained), "--n", "50", "--csv", same, "--plot", same]),
                    "are one file")
    assert list(tmp_path.iterdir()) == []
