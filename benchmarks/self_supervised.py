"""Self-supervised maps (ssVERDICT) against NLLS and a supervised MLP, on data as a scanner gives it, same run.

Run (CPU, reduced setting; a few minutes on a loaded 2-core machine)::

    .venv/bin/python benchmarks/self_supervised.py            # 20,000 classic voxels, 48×48×8 phantom
    .venv/bin/python benchmarks/self_supervised.py --quick    # smoke run: 2,000 voxels, 24×24×4 phantom
    .venv/bin/python benchmarks/self_supervised.py --sweep    # the encoder defaults (dropout, width, depth)

Cases
-----
(a) **classic VERDICT as a scanner gives it**: per voxel f_ic ~ U(0.1, 0.7), f_vasc ~ U(0.01, 0.15), R ~ U(4, 12)
    µm, one T2 ~ U(60, 150) ms and T1 ~ U(1200, 2500) ms for the voxel's water, S0 = 1000 · U(0.7, 1.3). Each of the
    20 acquired INNOVATE volumes is S0 (1 − e^{−TR/T1}) e^{−TE/T2} · VERDICT(b) plus Rician noise at a fixed
    σ = 1000 / 35 (the scanner's noise, fixed on the S0 = 1000 scale before relaxation; so the effective SNR
    varies with S0, T1, T2 and b). Every method direction-averages and normalises per series as it does on a DWI.
(b) **rVERDICT scanner-like DWI with truth**: the digital prostate phantom (:mod:`napari_rverdict.data.phantom`,
    20 INNOVATE volumes, one σ = 1000/35 on every volume as a scanner makes it ("s0"), Rician), its gland voxels.

Methods: ``fit_self_supervised`` with σ estimated from the DWI (``sigma="auto"``, the CLI's, dock's and cohorts'
default) and with the MSE loss (``sigma=None``), for (a) also with the Rician loss and the true σ; the batched NLLS
``fit_volume`` (defaults: 4 screened starts, ≤ 1000 LM iterations), and a supervised 3 × 150 MLP trained on the
project's synthetic prior (Dirichlet fractions, default ranges, SNR 35 on the "s0" reference; its training
time shown apart). Per map: RMSE and bias (mean estimate − truth) against the truth over the voxels; wall time;
median ``fit_nrmse``.

Writes ``benchmarks/results/self_supervised.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from napari_rverdict.data.noise import add_rician_noise
from napari_rverdict.data.phantom import make_phantom
from napari_rverdict.data.synth import noise_free_signals, simulate
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import train
from napari_rverdict.maps.nlls import fit_volume
from napari_rverdict.maps.predict import predict_volume
from napari_rverdict.maps.self_supervised import DEFAULT_OPTIONS, fit_self_supervised, fit_signals_self_supervised
from napari_rverdict.physics.protocol import Protocol

OUT = Path(__file__).resolve().parent / "results"
SIGMA_A = 1000.0 / 35.0
MAPS = {"verdict": ("f_ic", "f_vasc", "R"), "rverdict": ("f_ic", "f_ees", "f_vasc", "R", "D_ees", "T1",
                                                         "T2_vasc_ees", "T2_ic")}


# ---------------------------------------------------------------------- data
def classic_scanner(n: int, seed: int, sigma: float = SIGMA_A):
    """Case (a): (n, 1, 1, 20) raw DWI, its 20-volume protocol, truth {map: (n,)}, σ."""
    rng = np.random.default_rng(seed)
    prot = Protocol.innovate(direction_averaged=False)
    f_ic = rng.uniform(0.1, 0.7, n)
    f_vasc = rng.uniform(0.01, 0.15, n)
    radius = rng.uniform(4.0, 12.0, n)
    t2, t1 = rng.uniform(60.0, 150.0, n), rng.uniform(1200.0, 2500.0, n)
    s0 = 1000.0 * rng.uniform(0.7, 1.3, n)
    clean = noise_free_signals("verdict", {"f_ic": f_ic, "f_vasc": f_vasc, "R": radius}, prot)
    te, tr = np.asarray(prot.te), np.asarray(prot.tr)
    weight = s0[:, None] * (1 - np.exp(-tr[None] / t1[:, None])) * np.exp(-te[None] / t2[:, None])
    dwi = add_rician_noise(clean * weight, sigma, rng).astype(np.float32)
    truth = {"f_ic": f_ic, "f_vasc": f_vasc, "R": radius}
    return dwi.reshape(n, 1, 1, -1), prot, truth, sigma


def rverdict_phantom(shape, seed: int):
    """Case (b): the phantom's DWI, protocol, gland mask and truth at the gland voxels."""
    ph = make_phantom(shape, snr=35.0, seed=seed, snr_reference="s0")
    return ph.dwi, ph.protocol, ph.mask, {k: v[ph.mask].astype(np.float64) for k, v in ph.truth.items()}


def supervised_mlp(model: str, n: int, epochs: int, seed: int):
    t0 = time.perf_counter()
    data = simulate(model, "innovate", n=n, snr=35.0, seed=seed + 101)
    res = train(data, TrainConfig(net="mlp", epochs=epochs, patience=5, batch_size=100, seed=seed,
                                  report_every=10**9))
    return res.bundle, time.perf_counter() - t0


# ---------------------------------------------------------------------- one case
def _score(maps: dict, mask: np.ndarray, truth: dict, names) -> dict:
    out = {}
    for k in names:
        est = maps[k][mask].astype(np.float64)
        d = est - truth[k]
        out[k] = (float(np.sqrt(np.nanmean(d * d))), float(np.nanmean(d)))
    out["fit_nrmse"] = float(np.nanmedian(maps["fit_nrmse"][mask]))
    return out


def run_case(label: str, model: str, dwi, prot, mask, truth, args, sigma=None) -> list[dict]:
    names = MAPS[model]
    rows = []

    def timed(method: str, fn, extra_s: float | None = None):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            maps = fn()
        wall = time.perf_counter() - t0
        rows.append({"case": label, "method": method, "time_s": wall, "extra_s": extra_s,
                     **_score(maps, mask, truth, names)})
        print(f"  {method}: {wall:.1f} s", flush=True)

    dev = args.device
    timed("self-supervised, σ estimated (sigma=\"auto\", the default of the CLI, dock and cohorts)",
          lambda: fit_self_supervised(model, dwi, prot, mask, device=dev, seed=args.seed, sigma="auto"))
    timed("self-supervised, MSE (sigma=None)", lambda: fit_self_supervised(model, dwi, prot, mask, device=dev,
                                                                        seed=args.seed))
    if sigma is not None:
        timed("self-supervised, Rician (σ known)", lambda: fit_self_supervised(
            model, dwi, prot, mask, device=dev, seed=args.seed, sigma=sigma))
    timed("NLLS", lambda: fit_volume(model, dwi, prot, mask, device=dev, seed=args.seed))
    bundle, t_train = supervised_mlp(model, args.n_train, args.epochs, args.seed)
    timed("supervised MLP", lambda: predict_volume(bundle, dwi, prot, mask, device=dev), extra_s=t_train)
    baseline = {k: (float(np.std(truth[k])), 0.0) for k in names}
    rows.append({"case": label, "method": "truth mean (oracle constant)", "time_s": None, "extra_s": None,
                 **baseline, "fit_nrmse": None})
    return rows


# ---------------------------------------------------------------------- output
def _fmt(x, d=3):
    return "–" if x is None else f"{x:.{d}g}"


def table(rows, names) -> list[str]:
    head = "| method | " + " | ".join(f"{k} RMSE (bias)" for k in names) + " | median fit_nrmse | wall time |"
    lines = [head, "|" + "---|" * (len(names) + 3)]
    for r in rows:
        cells = [f"{_fmt(r[k][0])} ({r[k][1]:+.2g})" for k in names]
        t = "–" if r["time_s"] is None else f"{r['time_s']:.1f} s"
        if r["extra_s"]:
            t += f" (+ {r['extra_s']:.0f} s training)"
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {_fmt(r['fit_nrmse'])} | {t} |")
    return lines


def sweep(args) -> None:
    """Input dropout (and width / depth) of the encoder on case (a) at the benchmark's σ and at a 6× lower one:
    RMSE / SD(truth) per map, epochs run and time."""
    configs = [dict(dropout=0.0), dict(dropout=0.05), dict(dropout=0.1), dict(dropout=0.2), dict(dropout=0.5),
               dict(dropout=0.5, width=10), dict(dropout=0.05, width=128), dict(dropout=0.05, depth=2)]
    lines = [f"# Encoder settings, case (a), {args.n_classic} voxels: RMSE / SD(truth) per map", "",
             "| σ | width | depth | dropout | f_ic | f_vasc | R | epochs | time |", "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines))
    for sigma in (SIGMA_A, 5.0):
        dwi, prot, truth, _ = classic_scanner(args.n_classic, args.seed, sigma)
        raw = dwi.reshape(-1, dwi.shape[-1])
        for kw in configs:
            t0 = time.perf_counter()
            fit = fit_signals_self_supervised("verdict", raw, prot, device=args.device, seed=args.seed, **kw)
            r = [np.sqrt(np.mean((fit.maps[k] - truth[k]) ** 2)) / np.std(truth[k]) for k in MAPS["verdict"]]
            opts = {**DEFAULT_OPTIONS.__dict__, **kw}
            lines.append(f"| {sigma:.3g} | {opts['width']} | {opts['depth']} | {opts['dropout']} | "
                         + " | ".join(f"{x:.2f}" for x in r)
                         + f" | {fit.epochs_run} | {time.perf_counter() - t0:.1f} s |")
            print(lines[-1], flush=True)
    out = Path(args.out).with_name(Path(args.out).stem + "_sweep.md")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2,000 classic voxels, a 24×24×4 phantom")
    ap.add_argument("--sweep", action="store_true", help="encoder dropout / width / depth instead of the table")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT / "self_supervised.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.n_classic = 2000 if args.quick else 20000
    args.shape = (24, 24, 4) if args.quick else (48, 48, 8)
    args.n_train, args.epochs = (10000, 5) if args.quick else (40000, 20)
    if args.sweep:
        args.n_classic = 1000 if args.quick else 3000
        sweep(args)
        return
    load0 = os.getloadavg()[0]
    t_start = time.perf_counter()
    dwi, prot, truth, sigma = classic_scanner(args.n_classic, args.seed)
    print(f"(a) classic VERDICT, {args.n_classic} voxels", flush=True)
    rows_a = run_case("a", "verdict", dwi, prot, np.ones(dwi.shape[:3], dtype=bool), truth, args, sigma=sigma)
    dwi_b, prot_b, mask_b, truth_b = rverdict_phantom(args.shape, args.seed)
    print(f"(b) rVERDICT phantom {args.shape}, {int(mask_b.sum())} gland voxels", flush=True)
    rows_b = run_case("b", "rverdict", dwi_b, prot_b, mask_b, truth_b, args)
    setting = (f"{'--quick' if args.quick else 'reduced CPU setting'}: (a) {args.n_classic} voxels, (b) phantom "
               f"{'×'.join(map(str, args.shape))} ({int(mask_b.sum())} gland voxels); supervised MLP on "
               f"{args.n_train} synthetic signals, ≤ {args.epochs} epochs; device {args.device}, "
               f"{args.threads} thread(s), seed {args.seed}")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, torch {torch.__version__}; "
               f"load {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
               f"{(time.perf_counter() - t_start) / 60:.1f} min in all")
    lines = ["# Self-supervised fitting against NLLS and a supervised MLP", "", setting + ".", "", machine, "",
             "## (a) classic VERDICT as a scanner gives it (σ fixed at 1000/35, T1/T2-weighted series)", "",
             *table(rows_a, MAPS["verdict"]), "", "## (b) rVERDICT phantom as a scanner makes it (σ = 1000/35 on every volume)",
             "", *table(rows_b, MAPS["rverdict"]), ""]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
