"""Robustness to noise mismatch: RMSE of MLP, ResNetReg and ResNetReg-ST relative to the Bayes limit.

Each network is trained twice on rVERDICT / INNOVATE synthetic data: at a fixed SNR 35 and at SNR drawn
uniformly from 15–60 per signal. Each is tested at SNR 15, 25, 35 and 50 on fresh signals; the reference is the
Bayes limit on the *same* test signals (the posterior mean under the training prior by prior-dictionary
weighting, :mod:`napari_rverdict.evaluate.posterior`), so "RMSE / Bayes" = 1 is the best any estimator can do on average.

This is where the paper's claim for soft-thresholding (ResNetReg-ST holds up better when the test noise differs
from the training noise) is tested.

CPU-reduced defaults (stated in the output): 20,000 training signals (80/20 split), at most 25 epochs with
patience 5, ResNets at depth 21 (2 stages) and width 64 instead of 31 / 128, 600 test signals per SNR, a
150,000-entry dictionary. Run ``python benchmarks/robustness.py --help`` for the full-size switches.

Writes benchmarks/results/robustness.md and robustness.csv (partial results after every network).
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

from napari_rverdict.data.noise import DEFAULT_SNR_REFERENCE, SNR_REFERENCES
from napari_rverdict.data.synth import simulate
from napari_rverdict.evaluate.posterior import build_dictionary, posterior_from_dictionary, posterior_quantities
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import train
from napari_rverdict.physics.protocol_files import load_protocol

OUT = Path(__file__).resolve().parent / "results"
PARAMS = ("f_ic", "f_ees", "f_vasc", "R", "D_ees", "T1", "T2_vasc_ees", "T2_ic")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--res-depth", type=int, default=21)
    ap.add_argument("--res-width", type=int, default=64)
    ap.add_argument("--n-test", type=int, default=600)
    ap.add_argument("--n-dictionary", type=int, default=150_000)
    ap.add_argument("--test-snr", default="15,25,35,50")
    ap.add_argument("--snr-reference", choices=SNR_REFERENCES, default=DEFAULT_SNR_REFERENCE,
                    help="where σ = 1/SNR is fixed, for training and test data (default: %(default)s, the paper's)")
    ap.add_argument("--nets", default="mlp,resnetreg,resnetreg-st")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model = "rverdict"
    protocol = load_protocol("innovate")
    test_snrs = [float(x) for x in args.test_snr.split(",")]
    nets = args.nets.split(",")
    train_settings = {"35": 35.0, "15-60": (15.0, 60.0)}

    # --- the Bayes limit on fixed test sets (one per test SNR)
    t0 = time.perf_counter()
    dictionary = build_dictionary(model, protocol, n=args.n_dictionary, seed=1)
    tests, bayes, ess = {}, {}, {}
    for snr in test_snrs:
        data = simulate(model, protocol, n=args.n_test, snr=snr, seed=int(1000 + snr), snr_reference=args.snr_reference)
        post = posterior_from_dictionary(data.signals, dictionary, 1.0 / data.peak_snr, device=args.device,
                                         n_volumes=data.protocol.n_volumes)  # each signal's own σ, σ/√n
        truth = posterior_quantities(model, data.params)
        tests[snr] = (data, truth)
        bayes[snr] = {k: float(np.sqrt(np.mean((post.mean[k] - truth[k]) ** 2))) for k in PARAMS}
        ess[snr] = float(np.median(post.ess))
        print(f"Bayes limit at SNR {snr:g}: " + ", ".join(f"{k} {v:.3g}" for k, v in bayes[snr].items())
              + f" (median ESS {ess[snr]:.0f})", flush=True)
    t_bayes = time.perf_counter() - t0

    rows = []  # net, train_snr, test_snr, param, rmse, bayes, ratio
    timings = {}
    for net in nets:
        for label, snr in train_settings.items():
            t0 = time.perf_counter()
            data = simulate(model, protocol, n=args.n_train, snr=snr, seed=7, snr_reference=args.snr_reference)
            depth, width = (None, None) if net == "mlp" else (args.res_depth, args.res_width)
            res = train(data, TrainConfig(net=net, depth=depth, width=width, epochs=args.epochs,
                                          patience=args.patience, device=args.device, seed=0))
            timings[(net, label)] = (time.perf_counter() - t0, res.epochs_run)
            for tsnr, (tdata, truth) in tests.items():
                pred = res.bundle.predict_normalised(tdata.signals, device=args.device)
                for k in PARAMS:
                    rmse = float(np.sqrt(np.mean((pred[k] - truth[k]) ** 2)))
                    rows.append((net, label, tsnr, k, rmse, bayes[tsnr][k], rmse / bayes[tsnr][k]))
            print(f"{net} trained at SNR {label}: {res.epochs_run} epochs, {timings[(net, label)][0]:.0f} s; "
                  + ", ".join(f"SNR {t:g}: {np.mean([r[6] for r in rows if r[:3] == (net, label, t)]):.3f}"
                              for t in test_snrs), flush=True)
            write(rows, bayes, ess, timings, args, test_snrs, t_bayes, time.perf_counter() - t_start)
    return 0


def write(rows, bayes, ess, timings, args, test_snrs, t_bayes, elapsed) -> None:
    tag = f"_{args.tag}" if args.tag else ""
    with open(OUT / f"robustness{tag}.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["net", "train_snr", "test_snr", "parameter", "rmse", "bayes_rmse", "ratio"])
        w.writerows(rows)
    lines = [
        f"# Robustness to noise mismatch (rVERDICT, INNOVATE, SNR on the \"{args.snr_reference}\" noise reference)", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared with other "
        f"jobs, torch {torch.__version__}, device {args.device}. Total {elapsed / 60:.1f} min "
        f"(Bayes limits {t_bayes:.0f} s).",
        "",
        f"CPU-reduced settings: {args.n_train:,} training signals (80/20), ≤ {args.epochs} epochs, patience "
        f"{args.patience}; MLP 3 × 150; ResNetReg / ResNetReg-ST depth {args.res_depth} width {args.res_width} "
        f"(paper: 31 / 128, 100k signals, 100 epochs). Test: {args.n_test} fresh signals per SNR; Bayes limit = "
        f"RMSE of the posterior mean on the same signals ({args.n_dictionary:,}-entry prior dictionary, Rician "
        "likelihood with the noisy reference profiled out). Ratio = network RMSE / Bayes RMSE (1 = optimal; "
        f"Monte-Carlo error about ±{100 / np.sqrt(2 * args.n_test):.0f} % on each ratio's denominators, less on "
        "differences between networks, which share test signals).",
        "",
        "## Bayes-limit RMSE per test SNR", "",
        "| test SNR | median ESS | " + " | ".join(PARAMS) + " |",
        "|---|---|" + "---|" * len(PARAMS),
    ]
    for s in test_snrs:
        lines.append(f"| {s:g} | {ess[s]:.0f} | " + " | ".join(f"{bayes[s][k]:.3g}" for k in PARAMS) + " |")
    lines += ["", "## RMSE / Bayes limit (mean over the 8 maps, then per map)", "",
              "| net | trained at SNR | epochs | train s | " + " | ".join(f"test {s:g}" for s in test_snrs) + " |",
              "|---|---|---|---|" + "---|" * len(test_snrs)]
    done = sorted({(r[0], r[1]) for r in rows}, key=lambda x: (x[0], x[1]))
    for net, label in done:
        t, ep = timings[(net, label)]
        cells = [np.mean([r[6] for r in rows if r[0] == net and r[1] == label and r[2] == s]) for s in test_snrs]
        lines.append(f"| {net} | {label} | {ep} | {t:.0f} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    lines += ["", "| net | trained at | test SNR | " + " | ".join(PARAMS) + " |", "|---|---|---|" + "---|" * len(PARAMS)]
    for net, label in done:
        for s in test_snrs:
            vals = {r[3]: r[6] for r in rows if r[0] == net and r[1] == label and r[2] == s}
            lines.append(f"| {net} | {label} | {s:g} | " + " | ".join(f"{vals[k]:.2f}" for k in PARAMS) + " |")
    (OUT / f"robustness{'_' + args.tag if args.tag else ''}.md").write_text("\n".join(lines) + "\n",
                                                                            encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
