"""Noise: σ estimated from scanner-like DWIs, and networks trained at SNR 35 "peak", SNR 35 "s0" or matched.

Run (CPU, ~3 min on a loaded 2-core machine; ``--quick``: a smoke run in well under a minute)::

    .venv/bin/python benchmarks/noise_matching.py [--quick] [--n 30000] [--epochs 25] [--snr 25] [--tissue prior]

The DWIs are the project's phantom made as a scanner makes it (:func:`napari_rverdict.data.phantom.make_phantom`
with ``snr_reference="s0"``): one σ = 1000 / SNR on every one of the 20 acquired volumes and in the air around the
gland, S0 varying smoothly (±10 %), T1 / T2 by tissue, so the gland's SNR at its brightest b = 0 is ≈ 0.4–0.6 × the
setting; truth known. ``--tissue prior`` draws every gland voxel's parameters from the training prior instead of
the anatomical regions: intervals calibrated over the prior can be held to their nominal coverage there, not on
tissue concentrated near the prior's centre.

1. σ estimate: relative error of each estimator (PIESNO on the air, MP-PCA in the gland, the spread between the
   3 repeated directions of each b) at three settings.
2. Maps: MLP (3 × 150) trained on rVERDICT signals at SNR 35 "peak" (this project's old convention), SNR 35 "s0"
   (the seed paper's), matched to the DWI on "peak" (each sample's SNR drawn from the DWI's per-voxel SNR) and
   matched on "s0" (the default: ``simulate(snr_from=estimate_noise(dwi, mask))``, one σ on S0's scale whose set
   has the DWI's 95th-percentile SNR), predicting the phantom at ``--snr`` (default 25: gland SNR ≈ 7–15): RMSE
   against the truth per map inside the gland.
3. The same three noise settings with uncertainty networks (β-NLL, conformally calibrated on synthetic data):
   coverage of the 68.27 % (map ± sd) and 95 % intervals against the truth in the gland.

CPU budget: ``--n`` training signals (default 30,000, split 80/20) and ``--epochs`` (default 25, patience 5),
a reduced setting; the trend, not the last digit, is the result. Writes
``benchmarks/results/noise_matching_snr<setting>.md``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from napari_rverdict.data.noise_estimate import estimate_noise
from napari_rverdict.data.phantom import TISSUES, make_phantom
from napari_rverdict.data.prior import parse_ranges
from napari_rverdict.data.synth import simulate
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import train
from napari_rverdict.maps.predict import predict_volume

OUT = Path(__file__).resolve().parent / "results"
MAPS = ("f_ic", "f_ees", "f_vasc", "R", "T2_vasc_ees", "T2_ic", "T1", "D_ees")


def sigma_table(shape, settings, seed, tissue) -> list[str]:
    rows = ["| setting (σ = 1000 / SNR) | gland SNR at brightest b = 0 (truth, 5–95 %) | PIESNO | MP-PCA | repeats |",
            "|---|---|---|---|---|"]
    for snr in settings:
        ph = make_phantom(shape, snr=snr, seed=seed, snr_reference="s0", tissue=tissue)
        clean = make_phantom(shape, snr=1e9, seed=seed, snr_reference="s0", tissue=tissue).dwi[ph.mask]
        true = clean[:, ph.protocol.is_b0].max(1) / ph.sigma
        cells = []
        for method in ("piesno", "mppca", "repeats"):
            est = estimate_noise(ph.to_dwi(), ph.mask, method=method)
            cells.append(f"{100 * (est.sigma / ph.sigma - 1):+.1f} %")
        p5, med, p95 = np.percentile(true, [5, 50, 95])
        rows.append(f"| {snr:g} | {med:.1f} ({p5:.1f}–{p95:.1f}) | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny phantom, few signals and epochs")
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snr", type=float, default=25.0, help="the phantom's setting for the maps (default 25)")
    ap.add_argument("--range", action="append", default=[], metavar="NAME=LOW,HIGH",
                    help="narrow a training range for every network (e.g. R=4,12), as `rverdict train --range`")
    ap.add_argument("--tissue", default="anatomy", choices=TISSUES,
                    help="the phantom's tissue: anatomy (regions near the prior's centre) or prior (every gland "
                         "voxel drawn from the training prior, where sd maps can be held to nominal coverage)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    shape = (32, 32, 4) if args.quick else (64, 64, 8)
    n, epochs = (3000, 2) if args.quick else (args.n, args.epochs)
    t0 = time.perf_counter()
    lines = [f"# Noise matching ({'quick smoke run' if args.quick else 'reduced CPU setting'}: MLP 3 × 150, "
             f"{n:,} rVERDICT training signals, ≤ {epochs} epochs, patience 5; phantom {'×'.join(map(str, shape))}, "
             f"{args.tissue} tissue, seed {args.seed}"
             + (f"; training ranges {', '.join(args.range)}" if args.range else "")
             + f"; torch {torch.__version__}, {os.cpu_count()} CPUs)", "",
             "## σ estimate: relative error", ""]
    lines += sigma_table(shape, (12.0, 25.0, 40.0), args.seed + 1, args.tissue)

    ranges = parse_ranges(args.range) or None
    ph = make_phantom(shape, snr=args.snr, seed=args.seed, snr_reference="s0", tissue=args.tissue)
    dwi, mask = ph.to_dwi(), ph.mask
    est = estimate_noise(dwi, mask)
    settings = {
        'SNR 35 "peak"': dict(snr=35.0, snr_reference="peak"),
        'SNR 35 "s0"': dict(snr=35.0, snr_reference="s0"),
        'matched, "peak"': dict(snr_from=est, snr_reference="peak"),
        "matched": dict(snr_from=est),
    }
    rmse, cover, chosen = {}, {}, None
    for label, noise in settings.items():
        data = simulate("rverdict", "innovate", n=n, seed=args.seed, ranges=ranges, **noise)
        if label == "matched":
            chosen = data.snr_setting  # the SNR on S0's scale the match chose
        for unc in (False, True):
            cfg = TrainConfig(net="mlp", epochs=epochs, patience=5, device="cpu", seed=args.seed, uncertainty=unc,
                              report_every=10**9)
            bundle = train(data, cfg).bundle
            maps = predict_volume(bundle, dwi, mask=mask, uncertainty=unc)
            if not unc:
                rmse[label] = {k: float(np.sqrt(np.mean((maps[k][mask] - ph.truth[k][mask]) ** 2))) for k in MAPS}
            else:
                half95 = bundle.interval(maps, 0.95)
                cover[label] = {k: (float(np.mean(np.abs(maps[k][mask] - ph.truth[k][mask]) <= maps[f"{k}_sd"][mask])),
                                    float(np.mean(np.abs(maps[k][mask] - ph.truth[k][mask]) <= half95[k][mask])))
                                for k in MAPS}
        print(f"{label}: done at {time.perf_counter() - t0:.0f} s", flush=True)

    p = est.snr["peak"]
    lines += ["", f"## Maps of the phantom at setting {args.snr:g} (σ = {ph.sigma:g}; estimated {est.sigma:.4g} by "
              f"{est.method}; gland SNR at the brightest b = 0: median {p['median']:.1f}, 5–95 % "
              f"{p['p5']:.1f}–{p['p95']:.1f}; matched on \"s0\": SNR {chosen:.3g}, the phantom's own S0-scale SNR "
              f"{ph.s0[mask].max() / ph.sigma:.3g}): RMSE against the truth in the gland ({int(mask.sum()):,} voxels)",
              "",
              "| training noise | " + " | ".join(MAPS) + " | mean RMSE / matched |",
              "|---|" + "---|" * (len(MAPS) + 1)]
    for label, r in rmse.items():
        ratio = np.mean([r[k] / rmse["matched"][k] for k in MAPS])
        lines.append(f"| {label} | " + " | ".join(f"{r[k]:.3g}" for k in MAPS) + f" | {ratio:.2f} |")
    lines += ["", "## Coverage of the uncertainty networks' intervals in the gland (68.27 % / 95 %)", "",
              "| training noise | " + " | ".join(MAPS) + " | mean |", "|---|" + "---|" * (len(MAPS) + 1)]
    for label, c in cover.items():
        m68, m95 = np.mean([c[k][0] for k in MAPS]), np.mean([c[k][1] for k in MAPS])
        lines.append(f"| {label} | " + " | ".join(f"{100 * c[k][0]:.0f} / {100 * c[k][1]:.0f}" for k in MAPS)
                     + f" | {100 * m68:.0f} / {100 * m95:.0f} |")
    lines += ["", f"total {time.perf_counter() - t0:.0f} s"]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        OUT.mkdir(exist_ok=True)
        suffix = ("" if args.tissue == "anatomy" else f"_{args.tissue}") + ("_ranges" if args.range else "")
        (OUT / f"noise_matching_snr{args.snr:g}{suffix}.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
