"""One short, prepared check for a lent GPU: does every torch path run on it, agree with the CPU, and how fast.

Run: ``.venv/bin/python benchmarks/gpu_check.py [--device cuda] [--quick]`` (about 2–4 minutes on one H200;
``--quick --device cpu`` is the dry run on any machine, under 2 minutes, to know the script works before GPU
time is spent on it).

Parts, each on its own (one that fails prints its error and the others still run; the exit code is 1 if any
failed):

(a) the machine: ``torch.cuda.is_available()``, device name, torch / CUDA versions, TF32 settings, CPU threads.
(b) training, the paper's batch size (100) on ``--n`` rVERDICT signals (80 % trained): an MLP and a ResNetReg
    31 / 128, ``--epochs`` epochs on the device (s/epoch: the first, with its warm-up, and the median of the
    rest), one epoch of each on the CPU as the baseline.
(c) ``predict_volume`` of a ``--shape`` volume (every voxel, mask all True, as ``benchmarks/cpu_speed.py`` builds
    it) with the ResNetReg bundle of (b), on the device and on the CPU: seconds, and the largest |difference| of the
    estimated maps in units of their training range (must be ≤ 1e-3).
(d) NLLS (``fit_volume``, 4 starts) on ``--voxels`` phantom voxels and a short self-supervised fit on the same
    voxels, on the device and on the CPU: seconds, NLLS agreement (voxels whose maps agree within 1e-3 of the range
    and whose costs agree; float64 on both, so nearly all must) and, for the self-supervised fit (its dropout draws
    differ between devices), the error against the phantom's truth on each (must be alike).
(e) the Dask ``worker_layout`` a cohort would choose on this machine for a CUDA task and for a CPU task.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
import warnings

import numpy as np
import torch

ROWS: list[tuple[str, str, str, str, str]] = []  # (part, what, device, cpu, check)
FAILED: list[str] = []


def row(part: str, what: str, device: str = "", cpu: str = "", check: str = "") -> None:
    ROWS.append((part, what, device, cpu, check))
    print(f"  {part:<3} {what:<52} {device:>16} {cpu:>16}  {check}", flush=True)


def run_part(name: str, fn, *args) -> None:
    t0 = time.perf_counter()
    print(f"\n[{name}] …", flush=True)
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - a check script: report and go on
        FAILED.append(name)
        print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc(limit=6, file=sys.stdout)
    print(f"[{name}] {time.perf_counter() - t0:.1f} s", flush=True)


def check(ok: bool, part: str, what: str) -> str:
    if not ok:
        FAILED.append(f"{part}: {what}")
    return "ok" if ok else f"FAIL ({what})"


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------- (a)
def part_machine(args) -> None:
    from napari_rverdict.threads import available_cpus

    cuda = torch.cuda.is_available()
    row("a", "torch.cuda.is_available()", str(cuda))
    row("a", "torch / CUDA runtime", torch.__version__, str(torch.version.cuda))
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            row("a", f"cuda:{i}", p.name[:16], f"{p.total_memory / 2**30:.0f} GiB")
    row("a", "TF32 matmul / cuDNN (must be False / any)", str(torch.backends.cuda.matmul.allow_tf32),
        str(torch.backends.cudnn.allow_tf32))
    row("a", "CPUs available / torch threads", str(available_cpus()), str(torch.get_num_threads()))
    from napari_rverdict.learn.device import resolve_device

    dev = resolve_device(args.device)  # raises (part fails) when the device asked for is not there
    row("a", "--device resolves to", str(dev))


# ---------------------------------------------------------------------- (b)
def _epoch_times(data, config) -> tuple[list[float], object]:
    from napari_rverdict.learn.config import ProgressKind
    from napari_rverdict.learn.train import iter_training

    times, last, result = [], 0.0, None
    for rec in iter_training(data, config):
        if rec.kind is ProgressKind.EPOCH:
            times.append(rec.elapsed_s - last)
            last = rec.elapsed_s
        elif rec.kind is ProgressKind.DONE:
            result = rec.result
    return times, result


def _fmt_epochs(times: list[float]) -> str:
    rest = times[1:]
    return f"{times[0]:.2f}" + (f" / {statistics.median(rest):.2f}" if rest else "")


def part_train(args, state) -> None:
    from napari_rverdict.data.synth import simulate
    from napari_rverdict.learn.config import TrainConfig

    t0 = time.perf_counter()
    data = simulate("rverdict", n=args.n, seed=1)
    row("b", f"simulate {args.n:,} rVERDICT signals (CPU), s", f"{time.perf_counter() - t0:.2f}")
    for net, depth, width in (("mlp", None, None), ("resnetreg", 31, 128)):
        name = f"{net} {depth or 3}/{width or 150}"
        cfg = {"net": net, "depth": depth, "width": width, "batch_size": 100, "patience": None, "seed": 0}
        dev_times, result = _epoch_times(data, TrainConfig(epochs=args.epochs, device=args.device, **cfg))
        cpu_times, _ = _epoch_times(data, TrainConfig(epochs=1, device="cpu", **cfg))
        val = result.history["val_loss"][-1]
        row("b", f"train {name}, batch 100: s/epoch (1st / rest)", _fmt_epochs(dev_times), f"{cpu_times[0]:.2f}",
            check(bool(np.isfinite(val)), "b", f"{name} val loss {val}") + f"  ×{cpu_times[0] / dev_times[-1]:.1f}"
            f" vs CPU, val MSE {val:.4f}")
        if net == "resnetreg":
            state["bundle"] = result.bundle


# ---------------------------------------------------------------------- (c)
def part_predict(args, state) -> None:
    from napari_rverdict.data.synth import simulate
    from napari_rverdict.maps.predict import predict_volume

    bundle = state.get("bundle")
    if bundle is None:  # (b) failed: a freshly initialised ResNetReg shows the same device paths
        from napari_rverdict.learn.config import TrainConfig
        from napari_rverdict.learn.train import train

        bundle = train(simulate("rverdict", n=2000, seed=1),
                       TrainConfig(net="resnetreg", depth=31, width=128, epochs=1, device="cpu")).bundle
    shape = tuple(args.shape)
    n_vox = int(np.prod(shape))
    vol = simulate(bundle.model, bundle.protocol, n=n_vox, seed=2)
    raw = vol.signals.astype(np.float32).reshape(*shape, len(bundle.protocol))  # any positive scale: maps normalise
    everything = np.ones(shape, bool)
    out, times = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dev in (args.device, "cpu"):
            predict_volume(bundle, raw[:, :, :1], bundle.protocol, everything[:, :, :1], device=dev)  # warm-up
            _sync(dev)
            t0 = time.perf_counter()
            out[dev] = predict_volume(bundle, raw, bundle.protocol, everything, device=dev)
            times[dev] = time.perf_counter() - t0
    worst, where = 0.0, ""
    for name in bundle.target_names:
        lo, hi = bundle.ranges[name]
        d = float(np.nanmax(np.abs(out[args.device][name].astype(np.float64) - out["cpu"][name])) / (hi - lo))
        if d >= worst:
            worst, where = d, name
    row("c", f"predict_volume {'×'.join(map(str, shape))} ({n_vox:,} voxels), s", f"{times[args.device]:.2f}",
        f"{times['cpu']:.2f}", f"×{times['cpu'] / times[args.device]:.1f} vs CPU")
    row("c", "max |device − CPU| / training range", f"{worst:.1e}", where,
        check(worst <= 1e-3, "c", f"{worst:.1e} > 1e-3"))


# ---------------------------------------------------------------------- (d)
def _phantom_voxels(n: int):
    """A phantom and a mask of its first ``n`` gland voxels (in memory order)."""
    from napari_rverdict.data.phantom import make_phantom

    side = 32
    while True:
        ph = make_phantom((side, side, 8), snr=35.0, seed=0)
        idx = np.flatnonzero(ph.mask)
        if len(idx) >= n or side >= 512:
            break
        side *= 2
    mask = np.zeros(ph.mask.shape, bool)
    mask.flat[idx[:n]] = True
    return ph, mask


def _rmse(maps, ph, mask, name) -> float:
    return float(np.sqrt(np.nanmean((maps[name][mask] - ph.truth[name][mask]) ** 2)))


def part_fits(args) -> None:
    from napari_rverdict.maps.nlls import fit_volume
    from napari_rverdict.maps.self_supervised import fit_self_supervised
    from napari_rverdict.physics.models import get_model

    model = get_model("rverdict")
    ph, mask = _phantom_voxels(args.voxels)
    n = int(mask.sum())
    dwi = ph.to_dwi()
    nlls, t_nlls, ss, t_ss = {}, {}, {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dev in (args.device, "cpu"):
            t0 = time.perf_counter()
            nlls[dev] = fit_volume(model, dwi, mask=mask, device=dev, n_starts=4, max_iter=args.max_iter,
                                   return_cost=True)
            t_nlls[dev] = time.perf_counter() - t0
        for dev in (args.device, "cpu"):
            t0 = time.perf_counter()
            ss[dev] = fit_self_supervised(model, dwi, mask=mask, device=dev, epochs=args.ss_epochs, seed=0,
                                          sigma=None)
            t_ss[dev] = time.perf_counter() - t0
    a, b = nlls[args.device], nlls["cpu"]
    close = np.ones(n, bool)
    for name in model.estimated_names:
        lo, hi = model.spec(name).low, model.spec(name).high
        close &= np.abs(a[name][mask] - b[name][mask]) <= 1e-3 * (hi - lo)
    cost_a, cost_b = a["cost"][mask], b["cost"][mask]
    same_cost = np.abs(cost_a - cost_b) <= 1e-6 * np.maximum(cost_b, 1e-12) + 1e-12
    lower = float(np.mean(cost_a <= cost_b * (1 + 1e-6) + 1e-12))
    row("d", f"NLLS, 4 starts, {n:,} phantom voxels, s", f"{t_nlls[args.device]:.2f}", f"{t_nlls['cpu']:.2f}",
        f"×{t_nlls['cpu'] / t_nlls[args.device]:.1f} vs CPU")
    row("d", "NLLS voxels agreeing (maps 1e-3 of range / cost)", f"{close.mean():.1%}", f"{same_cost.mean():.1%}",
        check(close.mean() >= 0.95 and lower >= 0.95, "d", "NLLS disagrees") + f"  cost ≤ CPU's on {lower:.1%}")
    row("d", "NLLS RMSE f_ic vs truth", f"{_rmse(a, ph, mask, 'f_ic'):.4f}", f"{_rmse(b, ph, mask, 'f_ic'):.4f}")
    row("d", f"self-supervised, ≤ {args.ss_epochs} epochs, MSE, s", f"{t_ss[args.device]:.2f}", f"{t_ss['cpu']:.2f}",
        f"×{t_ss['cpu'] / t_ss[args.device]:.1f} vs CPU")
    ra, rb = _rmse(ss[args.device], ph, mask, "f_ic"), _rmse(ss["cpu"], ph, mask, "f_ic")
    row("d", "self-supervised RMSE f_ic vs truth", f"{ra:.4f}", f"{rb:.4f}",
        check(np.isfinite(ra) and ra <= 1.5 * rb + 0.01, "d", "self-supervised worse on the device"))


# ---------------------------------------------------------------------- (e)
def part_layout(args) -> None:
    from napari_rverdict.cohort import FitTask, PredictTask
    from napari_rverdict.cohort.run import task_gpus
    from napari_rverdict.threads import available_cpus, worker_layout

    cpus = available_cpus(respect_env=False)
    for label, task in (("FitTask(device='auto')", FitTask(device="auto")),
                        ("PredictTask(device='cpu')", PredictTask("bundle.pt"))):
        gpus = task_gpus(task)
        workers, threads = worker_layout(cpus, n_gpus=gpus, n_tasks=None)
        row("e", f"worker_layout, {label}", f"{workers} × {threads} thr", f"{gpus} GPU(s), {cpus} CPUs",
            check(workers * threads <= cpus, "e", "oversubscribed"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="the device to check against the CPU (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="small sizes: the dry run (with --device cpu) in < 2 min")
    ap.add_argument("--n", type=int, default=100_000, help="training signals (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs on the device (default: %(default)s)")
    ap.add_argument("--shape", type=int, nargs=3, default=(176, 176, 14))
    ap.add_argument("--voxels", type=int, default=10_000, help="phantom voxels for NLLS / self-supervised")
    ap.add_argument("--max-iter", type=int, default=1000, help="NLLS iterations at most (default: %(default)s)")
    ap.add_argument("--ss-epochs", type=int, default=100, help="self-supervised epochs at most (default: %(default)s)")
    ap.add_argument("--skip", action="append", default=[], choices=list("abcde"))
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.epochs, args.shape = 3000, 2, (32, 32, 4)
        args.voxels, args.max_iter, args.ss_epochs = 400, 100, 3
    t0 = time.perf_counter()
    print(f"gpu_check: --device {args.device}{' --quick' if args.quick else ''}, pid {os.getpid()}")
    print(f"  {'':<3} {'what':<52} {args.device:>16} {'cpu':>16}  check")
    state: dict = {}
    parts = {"a": (part_machine, args), "b": (part_train, args, state), "c": (part_predict, args, state),
             "d": (part_fits, args), "e": (part_layout, args)}
    for key, (fn, *fn_args) in parts.items():
        if key not in args.skip:
            run_part(key, fn, *fn_args)
    print(f"\n=== summary ({time.perf_counter() - t0:.0f} s) ===")
    print(f"  {'':<3} {'what':<52} {args.device:>16} {'cpu':>16}  check")
    for r in ROWS:
        print(f"  {r[0]:<3} {r[1]:<52} {r[2]:>16} {r[3]:>16}  {r[4]}")
    print("FAILED: " + "; ".join(FAILED) if FAILED else "all parts passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    raise SystemExit(main())
