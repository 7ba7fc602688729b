"""One ``device`` argument end to end: the plumbing checked on the CPU (which device each step is handed), and the
same paths on CUDA where it is available (skipped otherwise; keep them short: GPU time is lent by the minute)."""

import warnings

import numpy as np
import pytest
import torch

from napari_rverdict.data.phantom import make_phantom
from napari_rverdict.data.synth import simulate
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.device import accumulation_dtype
from napari_rverdict.learn.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def data():
    return simulate("rverdict", n=1200, seed=5)


@pytest.fixture(scope="module")
def bundle(data):
    return train(data, TrainConfig(epochs=1, seed=0, device="cpu")).bundle


# ---------------------------------------------------------------------- the plumbing, on the CPU
def test_accumulation_dtype_is_float64_except_on_mps():
    assert accumulation_dtype("cpu") == torch.float64
    assert accumulation_dtype(torch.device("cuda:1")) == torch.float64
    assert accumulation_dtype("mps") == torch.float32  # MPS has no float64


def test_nlls_runs_its_bundle_init_on_the_fits_device(data, bundle, monkeypatch):
    from napari_rverdict.learn.bundle import Bundle
    from napari_rverdict.maps.nlls import fit_signals

    seen = []
    original = Bundle.predict_signals

    def spy(self, signals, **kw):
        seen.append(kw.get("device"))
        return original(self, signals, **kw)

    monkeypatch.setattr(Bundle, "predict_signals", spy)
    fit_signals("rverdict", data.signals[:8], data.protocol, init=bundle, n_starts=1, max_iter=5, device="cpu")
    assert seen and all(d is not None and torch.device(d) == torch.device("cpu") for d in seen)


def test_uncertainty_calibration_runs_on_the_training_device(data, monkeypatch):
    from napari_rverdict.learn import uncertainty as uncertainty_module

    seen = []
    original = uncertainty_module.calibrate_bundle

    def spy(*args, **kw):
        seen.append(kw.get("device"))
        return original(*args, **kw)

    monkeypatch.setattr(uncertainty_module, "calibrate_bundle", spy)
    train(data, TrainConfig(epochs=1, seed=0, device="cpu", uncertainty=True))
    assert seen == [torch.device("cpu")]


def test_cohort_layout_counts_gpus_only_for_tasks_that_use_them(monkeypatch):
    from napari_rverdict.cohort import FitTask, PredictTask
    from napari_rverdict.cohort import run as run_module

    monkeypatch.setattr(run_module, "_gpus", lambda: 4)
    assert run_module.task_gpus(PredictTask("m.pt")) == 0  # the predict default, "cpu": CPU workers
    assert run_module.task_gpus(FitTask(device="mps")) == 0
    assert run_module.task_gpus(FitTask(device="auto")) == 4
    assert run_module.task_gpus(PredictTask("m.pt", device="CUDA")) == 4
    assert run_module.task_gpus(PredictTask("m.pt", device="cuda:2")) == 1  # every task on that one
    monkeypatch.setattr(run_module, "_gpus", lambda: 0)
    assert run_module.task_gpus(FitTask(device="auto")) == 0


def test_cohort_workers_are_pinned_one_gpu_each(monkeypatch):
    from types import SimpleNamespace

    from napari_rverdict.cohort import tasks

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(tasks, "_dask_worker", lambda: SimpleNamespace(name=4))
    assert tasks.device_here("auto") == "cuda:1"
    assert tasks.device_here(" CUDA") == "cuda:1"
    assert tasks.device_here("cuda:2") == "cuda:2"  # an explicit device stands
    assert tasks.device_here("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert tasks.device_here("auto") == "auto"  # one GPU: nothing to spread


# ---------------------------------------------------------------------- the same on CUDA
@needs_cuda
def test_predict_volume_on_cuda_matches_the_cpu(bundle):
    from napari_rverdict.maps.predict import predict_volume

    ph = make_phantom((16, 16, 2), snr=35, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = predict_volume(bundle, ph.to_dwi(), mask=ph.mask, device="cpu")
        gpu = predict_volume(bundle, ph.to_dwi(), mask=ph.mask, device="cuda:0")
    for name in bundle.target_names:
        lo, hi = bundle.ranges[name]
        d = np.nanmax(np.abs(gpu[name] - cpu[name])) / (hi - lo)
        assert d <= 1e-3, (name, d)


@needs_cuda
def test_nlls_and_self_supervised_on_cuda(data, bundle):
    from napari_rverdict.maps.nlls import fit_signals
    from napari_rverdict.maps.self_supervised import fit_signals_self_supervised

    x = data.signals[:64]
    cpu = fit_signals("rverdict", x, data.protocol, init=bundle, n_starts=2, max_iter=100, device="cpu",
                      return_cost=True)
    gpu = fit_signals("rverdict", x, data.protocol, init=bundle, n_starts=2, max_iter=100, device="cuda",
                      return_cost=True)
    alike = gpu["cost"] <= cpu["cost"] * 1.01 + 1e-9  # the same fit in float64 (rounding may part a few voxels)
    assert alike.mean() >= 0.9, alike.mean()
    fit = fit_signals_self_supervised("rverdict", data.signals[:400], data.protocol, device="cuda", epochs=2,
                                      sigma=0.03)
    assert fit.device.startswith("cuda") and all(np.isfinite(v).all() for v in fit.maps.values())


@needs_cuda
def test_a_bundle_trained_on_cuda_saves_cpu_tensors(data, tmp_path):
    from napari_rverdict.learn.bundle import load_bundle

    res = train(data, TrainConfig(net="resnetreg-st", depth=11, width=16, epochs=1, device="cuda", uncertainty=True))
    path = res.bundle.save(tmp_path / "gpu.pt")
    payload = torch.load(path, weights_only=True)  # no map_location: what a CPU-only machine would get
    assert all(v.device.type == "cpu" for v in payload["state_dict"].values())
    again = load_bundle(path)
    maps = again.predict_signals(data.signals[:50], device="cuda", uncertainty=True)
    assert all(np.isfinite(v).all() for v in maps.values())
