"""The training engine: loss falls, reproducibility, stop event, early stopping with restore, bad inputs."""

import dataclasses
import threading

import numpy as np
import pytest
import torch

from napari_rverdict.data.synth import simulate
from napari_rverdict.learn import train as train_mod
from napari_rverdict.learn.config import ProgressKind, TrainConfig
from napari_rverdict.learn.device import resolve_device
from napari_rverdict.learn.train import batch_bounds, iter_training, train

SMALL = {"mlp": {}, "resnetreg": {"depth": 11, "width": 32}, "resnetreg-st": {"depth": 11, "width": 32}}


@pytest.fixture(scope="module")
def data():
    return simulate("rverdict", n=2000, seed=1)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("net", ["mlp", "resnetreg", "resnetreg-st"])
def test_each_network_learns(data, net):
    res = train(data, TrainConfig(net=net, epochs=4, **SMALL[net]))
    h = res.history
    assert len(h["train_loss"]) == len(h["val_loss"]) == len(h["lr"]) == 4 == res.epochs_run
    assert h["train_loss"][-1] < 0.7 * h["train_loss"][0]
    assert min(h["val_loss"][1:]) < h["val_loss"][0]
    assert not res.stopped and res.n_steps == 4 * 16
    b = res.bundle
    assert b.net_name == net and b.target_names == data.model.estimated_names
    assert "S0" not in b.target_names  # rVERDICT's S0 is a nuisance, not a target
    assert not b.network.training and next(b.network.parameters()).device.type == "cpu"
    assert all(v.device.type == "cpu" for v in res.last_state_dict.values())
    # the bundle holds the best epoch's weights
    assert h["best_epoch"] == int(np.argmin(h["val_loss"])) + 1


def test_same_seed_same_weights(data):
    cfg = TrainConfig(epochs=2, seed=3)
    a = train(data, cfg).bundle.network.state_dict()
    b = train(data, cfg).bundle.network.state_dict()
    c = train(data, dataclasses.replace(cfg, seed=4)).bundle.network.state_dict()
    assert _same(a, b)
    assert not _same(a, c)


def test_global_rng_untouched(data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(data, TrainConfig(epochs=1))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("k", [1, 7])
def test_stop_event_within_one_batch(data, k):
    stop = threading.Event()
    seen = []

    def cb(rec):
        seen.append(rec)
        if rec.kind == "batch" and rec.epoch == 2 and rec.batch == k:
            stop.set()

    res = train(data, TrainConfig(epochs=50, report_every=1), stop_event=stop, callback=cb)
    assert res.stopped
    assert res.n_steps == 16 + k  # one full epoch of 16 batches, then exactly k
    assert res.epochs_run == 2 and res.history["partial_last_epoch"]
    assert len(res.history["val_loss"]) == 2  # the interrupted epoch is validated too
    assert seen[-1].kind == "done" and seen[-1].result is res
    best = res.history["best_epoch"]
    assert best in (1, 2)
    if best == 2:
        assert _same(res.bundle.network.state_dict(), res.last_state_dict)


def test_stop_before_start_returns_initial_weights(data):
    stop = threading.Event()
    stop.set()
    res = train(data, TrainConfig(epochs=5), stop_event=stop)
    assert res.stopped and res.n_steps == 0 and res.epochs_run == 0
    assert res.history["val_loss"] == [] and res.bundle is not None


def test_early_stopping_restores_best(data, monkeypatch):
    losses = iter([0.5, 0.3, 0.4, 0.45, 0.6, 0.7, 0.8])
    states = []
    real = train_mod._evaluate_loss

    def fake(net, x, y):
        real(net, x, y)
        states.append({k: v.clone() for k, v in net.state_dict().items()})
        return next(losses)

    monkeypatch.setattr(train_mod, "_evaluate_loss", fake)
    res = train(data, TrainConfig(epochs=20, patience=2))
    assert res.epochs_run == 4 and res.history["best_epoch"] == 2 and not res.stopped
    assert _same(res.bundle.network.state_dict(), states[1])
    assert _same(res.last_state_dict, states[3])
    assert not _same(states[1], states[3])


def test_progress_records(data):
    recs = list(iter_training(data, TrainConfig(epochs=2, report_every=5)))
    kinds = [r.kind for r in recs]
    assert kinds == ["batch"] * 3 + ["epoch"] + ["batch"] * 3 + ["epoch", "done"]  # str enum: strings compare
    B, E, D = ProgressKind.BATCH, ProgressKind.EPOCH, ProgressKind.DONE
    assert all(isinstance(k, ProgressKind) for k in kinds) and kinds == [B] * 3 + [E] + [B] * 3 + [E, D]
    assert str(D) == f"{D}" == "done" and ProgressKind("epoch") is E
    assert [r.batch for r in recs if r.kind == "batch"][:3] == [5, 10, 15]
    ep = recs[3]
    assert ep.n_epochs == 2 and ep.n_batches == 16 and ep.val_loss > 0 and ep.best_epoch == 1 and ep.lr == 1e-3
    assert ep.eta_s is not None and ep.eta_s >= 0 and ep.elapsed_s > 0
    assert recs[-1].result.epochs_run == 2


def test_scheduler_and_verdict(data):
    vd = simulate("verdict", n=1000, seed=2)
    res = train(vd, TrainConfig(net="resnetreg", depth=11, width=8, epochs=2, scheduler=True, weight_decay=1e-5))
    assert res.bundle.target_names == ("f_ic", "f_vasc", "R") and res.bundle.width == 8


def test_bad_inputs(data):
    with pytest.raises(ValueError, match="unknown network"):
        train(data, TrainConfig(net="cnn", epochs=1))
    with pytest.raises(ValueError, match="batch_size"):
        train(data, TrainConfig(batch_size=1))
    with pytest.raises(ValueError, match="lr"):
        train(data, TrainConfig(lr=-1.0))
    empty = dataclasses.replace(data, signals=data.signals[:0], train_index=data.train_index[:0],
                                val_index=data.val_index[:0], params={k: v[:0] for k, v in data.params.items()})
    with pytest.raises(ValueError, match="empty"):
        train(empty, TrainConfig(epochs=1))
    bad = data.signals.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train(dataclasses.replace(data, signals=bad), TrainConfig(epochs=1))


def test_batch_bounds():
    assert batch_bounds(250, 100) == [(0, 100), (100, 200), (200, 250)]
    assert batch_bounds(201, 100) == [(0, 100), (100, 201)]  # no BatchNorm batch of one
    assert batch_bounds(50, 100) == [(0, 50)]


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_on_cuda(data):
    res = train(data, TrainConfig(net="resnetreg", depth=11, width=16, epochs=2, device="cuda"))
    assert res.device.startswith("cuda")
    assert next(res.bundle.network.parameters()).device.type == "cpu"
    assert all(v.device.type == "cpu" for v in res.last_state_dict.values())
    maps = res.bundle.predict_signals(data.signals[:100], device="cuda")
    cpu = res.bundle.predict_signals(data.signals[:100])
    for k in maps:
        np.testing.assert_allclose(maps[k], cpu[k], rtol=1e-3, atol=1e-5)


def test_plateau_scheduler_halves_lr(data, monkeypatch):
    real = train_mod._evaluate_loss

    def flat(net, x, y):
        real(net, x, y)
        return 0.5  # never improves after the first epoch

    monkeypatch.setattr(train_mod, "_evaluate_loss", flat)
    on = train(data, TrainConfig(epochs=5, patience=4, scheduler=True)).history["lr"]
    off = train(data, TrainConfig(epochs=5, patience=0, scheduler=False)).history["lr"]
    # ReduceLROnPlateau(patience = max(1, 4 // 4) = 1) halves the rate after the 2nd epoch in a row without
    # improvement (epoch 3); history["lr"] is the rate each epoch trained with, so the halving shows from epoch 4
    assert on == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4])
    assert off == [1e-3] * 5  # patience 0: no early stopping, all 5 epochs


def test_denormals_flushed_only_while_training(data, monkeypatch):
    tiny = torch.tensor([1e-40])  # a float32 denormal
    inside, outside = [], []
    real = train_mod._evaluate_loss

    def spy(net, x, y):
        inside.append(float(tiny * 1.0))
        return real(net, x, y)

    monkeypatch.setattr(train_mod, "_evaluate_loss", spy)
    train(data, TrainConfig(epochs=2), callback=lambda rec: outside.append(float(tiny * 1.0)))
    if not torch.set_flush_denormal(False):  # (False is the default) this CPU cannot flush: nothing to check
        pytest.skip("flush-denormal not supported on this CPU")
    assert len(inside) == 2 and all(v == 0.0 for v in inside)  # flushed while the trainer's code runs
    assert outside and all(v > 0 for v in outside)  # never in the caller's code between records
    assert float(tiny * 1.0) > 0  # nor afterwards


def test_config_as_a_dict_and_bad_config_data_or_seed(data):
    from napari_rverdict.errors import InputError

    a = train(data, {"epochs": 1, "seed": 3})
    b = train(data, TrainConfig(epochs=1, seed=3))
    for x, y in zip(a.bundle.network.state_dict().values(), b.bundle.network.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(InputError, match="unknown training setting.*epoch"):
        train(data, {"epoch": 1})
    with pytest.raises(InputError, match="config must be a TrainConfig"):
        train(data, "mlp")
    with pytest.raises(InputError, match="must be a SyntheticData"):
        train("sim.npz", TrainConfig(epochs=1))
    for seed in ("x", -1, 0.5, None):
        with pytest.raises(InputError, match="seed must be a whole number"):
            train(data, TrainConfig(epochs=1, seed=seed))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0])
def test_config_refuses_bad_lr_and_weight_decay(bad):
    from napari_rverdict.errors import InputError

    with pytest.raises(InputError, match="lr must be a positive number"):
        TrainConfig(lr=bad).validate()
    if bad != 0.0:
        with pytest.raises(InputError, match="weight_decay must be a finite number"):
            TrainConfig(weight_decay=bad).validate()


def test_diverged_training_raises(data):
    from napari_rverdict.errors import InputError
    from napari_rverdict.learn.config import TrainingDiverged

    small = simulate("rverdict", n=400, seed=0)
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 1.*lower learning rate") as info:
        train(small, TrainConfig(epochs=3, lr=1e6))
    assert isinstance(info.value, InputError) and info.value.epoch == 1


def test_nonfinite_final_weights_refused(data, monkeypatch):
    from napari_rverdict.learn.config import TrainingDiverged

    real = train_mod._state_copy

    def poisoned(net):
        state = real(net)
        next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
        return state

    monkeypatch.setattr(train_mod, "_state_copy", poisoned)
    monkeypatch.setattr(train_mod, "_evaluate_loss", lambda *a: 0.5)  # the losses stay finite
    with pytest.raises(TrainingDiverged, match="weights became NaN"):
        train(simulate("rverdict", n=400, seed=0), TrainConfig(epochs=1))
