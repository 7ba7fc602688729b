"""Calibration of the network uncertainty (rVERDICT, INNOVATE, SNR 35).

Trains an MLP with ``TrainConfig(uncertainty=True)`` (mean + log-variance, β-NLL with β = 0.5, per-map
normalised split-conformal interval quantiles from the validation set) and, with the same data and settings, a plain MSE MLP (to show what the
uncertainty head costs in accuracy). Then, on fresh held-out synthetic signals:

* per map, the fraction of truths inside the bundle's calibrated 68 % and 95 % intervals (target 68 ± 3 %,
  95 ± 2 %), beside the coverage of plain Gaussian intervals mean ± z · sd built on the same reported sd;
* RMSE of both networks beside the Bayes limit (posterior mean by prior-dictionary weighting) on a subsample;
* network sd vs reference posterior sd on that subsample: Pearson r and the median ratio;
* a reliability plot (observed vs nominal coverage for levels 5–99 %, and network vs posterior sd).

CPU-reduced defaults (stated in the output; chosen to finish in about 20 min on 2 shared cores): 30,000 training
signals (80/20 split), at most 30 epochs with patience 6; 10,000 test signals for coverage; 200 of them against
the reference posterior with a 200,000-entry dictionary (PHYSICS.md used 2 M entries and 400 signals). Full size:
``--n-train 100000 --epochs 100 --patience 20 --n-posterior 400 --n-dictionary 2000000``.

Writes benchmarks/results/calibration.md, calibration.csv and calibration.png.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_rverdict.data.synth import simulate
from napari_rverdict.data.noise import DEFAULT_SNR_REFERENCE, SNR_REFERENCES
from napari_rverdict.evaluate.posterior import build_dictionary, posterior_from_dictionary
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import train
from napari_rverdict.learn.uncertainty import coverage, interval_factor

OUT = Path(__file__).resolve().parent / "results"
LEVELS = (0.68, 0.95)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=30_000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--n-posterior", type=int, default=200)
    ap.add_argument("--n-dictionary", type=int, default=200_000)
    ap.add_argument("--snr", type=float, default=35.0)
    ap.add_argument("--snr-reference", choices=SNR_REFERENCES, default=DEFAULT_SNR_REFERENCE,
                    help="where σ = 1/SNR is fixed (README, Noise; default: %(default)s, the seed paper's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model, protocol = "rverdict", "innovate"

    data = simulate(model, protocol, n=args.n_train, snr=args.snr, seed=21, snr_reference=args.snr_reference)
    timings = {}
    t0 = time.perf_counter()
    unc = train(data, TrainConfig(epochs=args.epochs, patience=args.patience, uncertainty=True,
                                  device=args.device, seed=0))
    timings["uncertainty"] = (time.perf_counter() - t0, unc.epochs_run)
    print(f"uncertainty MLP: {unc.epochs_run} epochs, {timings['uncertainty'][0]:.0f} s; q_0.68 (sd factors) "
          + ", ".join(f"{k} {v:.2f}" for k, v in unc.bundle.sd_scale.items()), flush=True)
    t0 = time.perf_counter()
    plain = train(data, TrainConfig(epochs=args.epochs, patience=args.patience, device=args.device, seed=0))
    timings["mse"] = (time.perf_counter() - t0, plain.epochs_run)
    print(f"MSE MLP: {plain.epochs_run} epochs, {timings['mse'][0]:.0f} s", flush=True)
    b = unc.bundle
    names = list(b.map_names)

    test = simulate(model, protocol, n=args.n_test, snr=args.snr, seed=22, snr_reference=args.snr_reference)
    truth = b.model.derived_maps(test.params)
    pred = b.predict_normalised(test.signals, uncertainty=True, device=args.device)
    pred_plain = plain.bundle.predict_normalised(test.signals, device=args.device)
    cov = coverage(truth, pred, pred, levels=LEVELS, bundle=b)  # the bundle's conformal intervals
    cov_gauss = coverage(truth, pred, pred, levels=LEVELS)  # mean ± z · sd on the same sd
    fine_levels = np.round(np.concatenate([np.arange(0.05, 0.951, 0.05), [0.99]]), 3)
    fine = coverage(truth, pred, pred, levels=fine_levels, bundle=b)

    # reference posterior on a subsample
    t0 = time.perf_counter()
    dictionary = build_dictionary(model, protocol, n=args.n_dictionary, seed=5)
    sub = np.arange(args.n_posterior)
    post = posterior_from_dictionary(test.signals[sub], dictionary, 1.0 / test.peak_snr[sub], device=args.device,
                                     n_volumes=test.protocol.n_volumes)  # each signal's own σ, σ/√n per measurement
    t_post = time.perf_counter() - t0
    print(f"reference posterior: {args.n_posterior} signals × {args.n_dictionary:,} entries in {t_post:.0f} s "
          f"(median ESS {np.median(post.ess):.0f})", flush=True)

    rows = {}
    for k in names:
        t = np.asarray(truth[k], dtype=float)
        net_sd, post_sd = pred[f"{k}_sd"][sub].astype(float), post.sd[k]
        ok = np.isfinite(net_sd) & np.isfinite(post_sd)
        r = float(np.corrcoef(net_sd[ok], post_sd[ok])[0, 1]) if net_sd[ok].std() > 0 else float("nan")
        rows[k] = {
            "cov68": cov[k][0.68], "cov95": cov[k][0.95],
            "gauss68": cov_gauss[k][0.68], "gauss95": cov_gauss[k][0.95],
            "rmse_unc": float(np.sqrt(np.mean((pred[k] - t) ** 2))),
            "rmse_mse": float(np.sqrt(np.mean((pred_plain[k] - t) ** 2))),
            "rmse_unc_sub": float(np.sqrt(np.mean((pred[k][sub] - t[sub]) ** 2))),
            "rmse_mse_sub": float(np.sqrt(np.mean((pred_plain[k][sub] - t[sub]) ** 2))),
            "rmse_bayes_sub": float(np.sqrt(np.mean((post.mean[k] - t[sub]) ** 2))),
            "sd_r": r, "sd_ratio": float(np.median(net_sd[ok] / np.maximum(post_sd[ok], 1e-300))),
            "post_cov68": coverage(t[sub], post.mean[k], post_sd, levels=(0.68,))[0.68],
            "scale": b.sd_scale[k], "ratio95": interval_factor(b, k, 0.95),
        }
    elapsed = time.perf_counter() - t_start
    write(rows, fine, fine_levels, pred, post, sub, names, args, timings, t_post, elapsed, post.ess)
    return 0


def write(rows, fine, fine_levels, pred, post, sub, names, args, timings, t_post, elapsed, ess) -> None:
    tag = f"_{args.tag}" if args.tag else ""
    keys = ["cov68", "cov95", "gauss68", "gauss95", "ratio95", "rmse_unc", "rmse_mse", "rmse_unc_sub", "rmse_mse_sub", "rmse_bayes_sub", "sd_r",
            "sd_ratio", "post_cov68", "scale"]
    with open(OUT / f"calibration{tag}.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["map"] + keys)
        for k in names:
            w.writerow([k] + [rows[k][c] for c in keys])
    lines = [
        f"# Calibration of the network uncertainty (rVERDICT, INNOVATE, SNR {args.snr:g} on the \"{args.snr_reference}\" noise reference)", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared with other "
        f"jobs, torch {torch.__version__}, device {args.device}. Total {elapsed / 60:.1f} min.", "",
        f"CPU-reduced settings: MLP 3 × 150, {args.n_train:,} training signals (80/20), ≤ {args.epochs} epochs, "
        f"patience {args.patience} (paper: 100k, 100 epochs). Uncertainty MLP: mean + log-variance, β-NLL "
        f"(β = 0.5), intervals calibrated per map by normalised split conformal prediction on the "
        f"{int(0.2 * args.n_train):,} validation signals (quantiles of |y − μ| / σ at levels 0.05–0.99; reported "
        f"sd = 68.27 % half-width); {timings['uncertainty'][1]} epochs "
        f"in {timings['uncertainty'][0]:.0f} s. Plain MSE MLP, same data: {timings['mse'][1]} epochs in "
        f"{timings['mse'][0]:.0f} s. Coverage on {args.n_test:,} fresh signals (binomial error ±"
        f"{100 * np.sqrt(0.68 * 0.32 / args.n_test):.1f} % at 68 %). Reference posterior on {args.n_posterior} of "
        f"them: {args.n_dictionary:,}-entry prior dictionary, Rician likelihood with the noisy reference profiled "
        f"out, median ESS {np.median(ess):.0f}, {t_post:.0f} s.", "",
        "Coverage columns: the bundle's conformal intervals; Gaussian: mean ± z(L) · sd with the same reported sd "
        "(what a user assuming Gaussian errors would get). q_0.68: the factor on the network's σ in the reported sd; "
        "95/68: the 95 % half-width in units of the reported sd (1.96 for Gaussian errors).", "",
        "| map | 68 % coverage | 95 % coverage | Gaussian 68 % | Gaussian 95 % | q_0.68 | 95/68 | RMSE β-NLL net | "
        "RMSE MSE net | "
        f"RMSE β-NLL ({args.n_posterior}) | RMSE MSE ({args.n_posterior}) | Bayes limit ({args.n_posterior}) | "
        "r(net sd, posterior sd) | median net sd / posterior sd |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in names:
        r = rows[k]
        lines.append(f"| {k} | {100 * r['cov68']:.1f} % | {100 * r['cov95']:.1f} % | {100 * r['gauss68']:.1f} % | "
                     f"{100 * r['gauss95']:.1f} % | {r['scale']:.3g} | {r['ratio95']:.3g} | "
                     f"{r['rmse_unc']:.4g} | {r['rmse_mse']:.4g} | {r['rmse_unc_sub']:.4g} | {r['rmse_mse_sub']:.4g} | "
                     f"{r['rmse_bayes_sub']:.4g} | {r['sd_r']:.2f} | {r['sd_ratio']:.2f} |")
    ok = [k for k in names if abs(rows[k]["cov68"] - 0.68) <= 0.03 and abs(rows[k]["cov95"] - 0.95) <= 0.02]
    lines += ["", f"Within target (68 ± 3 %, 95 ± 2 %): {', '.join(ok) or 'none'}; outside: "
              f"{', '.join(k for k in names if k not in ok) or 'none'}.", "",
              "What the conformal calibration guarantees: marginal coverage (averaged over voxels) on data "
              "exchangeable with the validation set, i.e. synthetic signals from the training model, protocol, "
              "ranges, fraction sampler and SNR. It is right by construction there (up to the binomial error of the "
              "validation and test sets); it is not a per-voxel guarantee and does not carry over to data that "
              "differ from the training distribution (other SNR, artefacts, model mismatch).", ""]
    (OUT / f"calibration{tag}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(fine, fine_levels, pred, post, sub, names, OUT / f"calibration{tag}.png")


def plot(fine, levels, pred, post, sub, names, path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(2, 3, 1)
    for k in names:
        ax.plot(levels, [fine[k][lv] for lv in levels], marker=".", lw=1, label=k)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage")
    ax.set_title("reliability (held-out synthetic)", fontsize=9)
    ax.legend(fontsize=6)
    for i, k in enumerate(["f_ic", "R", "D_ees", "T1", "T2_ic"]):
        ax = fig.add_subplot(2, 3, i + 2)
        x, y = post.sd[k], pred[f"{k}_sd"][sub]
        ax.scatter(x, y, s=4, alpha=0.5)
        hi = float(max(x.max(), y.max()))
        ax.plot([0, hi], [0, hi], "k--", lw=0.8)
        ax.set_xlabel("reference posterior sd")
        ax.set_ylabel("network sd")
        ax.set_title(f"{k}: r = {np.corrcoef(x, y)[0, 1]:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    raise SystemExit(main())
