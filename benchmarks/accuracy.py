"""Accuracy of the three networks on rVERDICT and classic VERDICT, against √CRLB and the Bayes limit.

Run (CPU, reduced setting, ~20 min on a loaded 2-core machine)::

    .venv/bin/python benchmarks/accuracy.py

Paper setting (100,000 signals split 80/20, up to 100 epochs, patience 20, no time box; meant for a GPU)::

    .venv/bin/python benchmarks/accuracy.py --full --device auto

For each signal model (rVERDICT, classic VERDICT) one synthetic training set is simulated (INNOVATE protocol,
SNR 35, Dirichlet fractions, default ranges) and the MLP, ResNetReg and ResNetReg-ST are trained on it with the
same seed, using each network's default depth/width for the model (MLP 3 × 150; ResNetReg 31/128 for rVERDICT,
28/16 for classic VERDICT). Each trained bundle is evaluated with :func:`napari_rverdict.evaluate.metrics.evaluate` on the
same fresh held-out set (a different seed): RMSE, MAPE (= MAE / range), Pearson r and the median √CRLB per
parameter. Beside them stands the Bayes-limit RMSE (:func:`napari_rverdict.evaluate.posterior.bayes_limit`: the posterior
mean under the training prior, by likelihood weighting of a prior dictionary) — the best RMSE any estimator can
reach on this synthetic data. Its Monte-Carlo error is about RMSE / sqrt(2 · n_bayes).

Writes ``benchmarks/results/accuracy.md`` (a table per model and network, and a summary), ``accuracy.csv`` (every
row) and ``accuracy.png`` (RMSE relative to the Bayes limit per parameter and network).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import torch

from napari_rverdict.data.synth import simulate
from napari_rverdict.evaluate.metrics import evaluate
from napari_rverdict.data.noise import DEFAULT_SNR_REFERENCE, SNR_REFERENCES
from napari_rverdict.evaluate.posterior import bayes_limit
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import train

NETS = ("mlp", "resnetreg", "resnetreg-st")
MODELS = ("rverdict", "verdict")
OUT = Path(__file__).resolve().parent / "results"


def _train_one(data, net: str, args) -> tuple[object, dict]:
    """Train one network; a time box (``--max-train-s``) sets the stop event, which keeps the best weights."""
    stop = threading.Event()
    timer = None
    if args.max_train_s:
        timer = threading.Timer(args.max_train_s, stop.set)
        timer.daemon = True
        timer.start()
    cfg = TrainConfig(net=net, epochs=args.epochs, batch_size=100, lr=args.lr, patience=args.patience,
                      device=args.device, seed=args.seed, report_every=10**9)
    t0 = time.perf_counter()
    res = train(data, cfg, stop_event=stop)
    if timer is not None:
        timer.cancel()
    h = res.history
    info = {"epochs": res.epochs_run, "best_epoch": h["best_epoch"], "time_s": time.perf_counter() - t0,
            "time_boxed": res.stopped, "best_val": h["val_loss"][h["best_epoch"] - 1] if h["best_epoch"] else None,
            "early_stopped": (not res.stopped) and res.epochs_run < args.epochs,
            "n_weights": sum(p.numel() for p in res.bundle.network.parameters()),
            "depth": res.bundle.depth, "width": res.bundle.width}
    return res.bundle, info


def _fmt(x, digits=4):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true",
                    help="paper setting: n 100,000, 100 epochs, patience 20, no time box (use a GPU)")
    ap.add_argument("--n", type=int, default=None, help="training signals, split 80/20 (reduced: 40,000)")
    ap.add_argument("--epochs", type=int, default=None, help="maximum epochs (reduced: 30)")
    ap.add_argument("--patience", type=int, default=None, help="early-stopping patience (reduced: 5)")
    ap.add_argument("--max-train-s", type=float, default=None,
                    help="time box per network in seconds, 0 = none (reduced: 200)")
    ap.add_argument("--n-test", type=int, default=10_000, help="fresh held-out signals (default: %(default)s)")
    ap.add_argument("--n-crlb", type=int, default=1000, help="signals for the median √CRLB (default: %(default)s)")
    ap.add_argument("--n-bayes", type=int, default=400, help="test signals for the Bayes limit (default: %(default)s)")
    ap.add_argument("--dictionary", type=int, default=200_000, help="Bayes-limit prior dictionary (default: %(default)s)")
    ap.add_argument("--snr", type=float, default=35.0)
    ap.add_argument("--snr-reference", choices=SNR_REFERENCES, default=DEFAULT_SNR_REFERENCE,
                    help="where σ = 1/SNR is fixed (README, Noise; default: %(default)s, the seed paper's)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (reduced default: 1; on a shared machine more threads make epochs "
                         "swing by 10×)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--out", default=str(OUT / "accuracy"), help="output stem (default: benchmarks/results/accuracy)")
    args = ap.parse_args(argv)
    full = {"n": 100_000, "epochs": 100, "patience": 20, "max_train_s": 0.0}
    reduced = {"n": 40_000, "epochs": 30, "patience": 5, "max_train_s": 200.0, "threads": 1}
    for k, v in (full if args.full else reduced).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    nets = [m.strip() for m in args.nets.split(",") if m.strip()]
    out_stem = Path(args.out)
    out_stem.parent.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    load0 = os.getloadavg()
    setting = (f"{'paper (--full)' if args.full else 'REDUCED CPU'} setting: {args.n:,} training signals (80/20 "
               f"split), ≤ {args.epochs} epochs, patience {args.patience}, batch 100, Adam lr {args.lr:g}, "
               + (f"time box {args.max_train_s:g} s per network" if args.max_train_s else "no time box")
               + f"; SNR {args.snr:g} on the \"{args.snr_reference}\" noise reference, INNOVATE protocol, Dirichlet fractions, default ranges; device {args.device}; "
               f"test: {args.n_test:,} fresh signals, √CRLB median over {args.n_crlb}; Bayes limit: posterior mean "
               f"from a {args.dictionary:,}-entry prior dictionary on {args.n_bayes} test signals")
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU core(s) shared with other jobs, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads)")
    print(setting, flush=True)
    print(machine, flush=True)

    rows, summary, sections, reports = [], [], [], {}
    for model in models:
        t0 = time.perf_counter()
        data = simulate(model, n=args.n, snr=args.snr, seed=args.seed, snr_reference=args.snr_reference)
        print(f"[{time.perf_counter() - t_start:6.0f} s] {model}: simulated {args.n:,} signals "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        t0 = time.perf_counter()
        bayes = bayes_limit(model, snr=args.snr, snr_reference=args.snr_reference, n_test=args.n_bayes, n_dictionary=args.dictionary,
                            seed=args.seed + 7, device=args.device)
        print(f"[{time.perf_counter() - t_start:6.0f} s] {model}: Bayes limit ({time.perf_counter() - t0:.1f} s): "
              + ", ".join(f"{k} {v:.3g}" for k, v in bayes.items()), flush=True)
        for net in nets:
            bundle, info = _train_one(data, net, args)
            print(f"[{time.perf_counter() - t_start:6.0f} s] {model}/{net}: {info['epochs']} epochs "
                  f"(best {info['best_epoch']}, {'time box' if info['time_boxed'] else 'early stop' if info['early_stopped'] else 'all'}) "
                  f"in {info['time_s']:.0f} s", flush=True)
            rep = evaluate(bundle, n=args.n_test, snr=args.snr, seed=args.seed + 1000, n_crlb=args.n_crlb,
                           device=args.device)
            reports[(model, net)] = rep
            ratios = []
            table = ["| parameter | unit | RMSE | bias | MAPE | r | √CRLB (median) | Bayes-limit RMSE | RMSE / Bayes |",
                     "|---|---|---|---|---|---|---|---|---|"]
            for name, r in rep.rows.items():
                b = bayes.get(name)
                ratio = r["rmse"] / b if b else float("nan")
                ratios.append(ratio)
                table.append(f"| {name} | {r['unit']} | {_fmt(r['rmse'])} | {_fmt(r['bias'], 3)} | {r['mape']:.3f} | "
                             f"{r['r']:.3f} | {_fmt(r['crlb'])} | {_fmt(b)} | {_fmt(ratio, 3)} |")
                rows.append({"model": model, "net": net, "parameter": name, "unit": r["unit"], "rmse": r["rmse"],
                             "bias": r["bias"], "mape": r["mape"], "r": r["r"], "sqrt_crlb_median": r["crlb"],
                             "bayes_rmse": b, "rmse_over_bayes": ratio, **{f"train_{k}": v for k, v in info.items()}})
            mean_mape = float(np.mean([r["mape"] for r in rep.rows.values()]))
            summary.append({"model": model, "net": net, "mean_mape": mean_mape,
                            "mean_ratio": float(np.nanmean(ratios)), **info})
            how = "stopped by the time box" if info["time_boxed"] else (
                "early stopping" if info["early_stopped"] else "all epochs")
            sections.append(f"### {bundle.model.label} · {net} (depth {info['depth']}, width {info['width']}, "
                            f"{info['n_weights']:,} weights)\n\n{info['epochs']} epochs ({how}), best at epoch "
                            f"{info['best_epoch']} (validation MSE {_fmt(info['best_val'])}), {info['time_s']:.0f} s. "
                            f"Mean MAPE {mean_mape:.3f}.\n\n" + "\n".join(table) + "\n")
            print(f"           mean MAPE {mean_mape:.3f}, mean RMSE/Bayes {np.nanmean(ratios):.3f}", flush=True)
            _write(out_stem, setting, machine, load0, t_start, summary, sections, rows, models, nets,
                   done=False)

    _write(out_stem, setting, machine, load0, t_start, summary, sections, rows, models, nets, done=True)


def _write(out_stem, setting, machine, load0, t_start, summary, sections, rows, models, nets, done: bool):
    """Write the markdown, CSV and PNG (after every network, so a run cut short keeps what it finished)."""
    total = time.perf_counter() - t_start
    lines = ["# Network accuracy on synthetic data (benchmarks/accuracy.py)", "",
             f"{setting}.", "", f"Machine: {machine}; load average {load0[0]:.2f} at start, "
             f"{os.getloadavg()[0]:.2f} at end; total run time {total / 60:.1f} min"
             + ("." if done else " so far (RUN NOT FINISHED: only the networks below were done)."), "",
             "MAPE = mean |pred − true| / (training range), as in the paper. √CRLB: median over test signals of the "
             "Cramér–Rao bound (Gaussian noise σ = 1/SNR, S0 nuisance); for rVERDICT it is large because 8 "
             "parameters + S0 are fitted to 10 measurements, and it bounds only unbiased estimators. The Bayes-limit "
             "RMSE is the RMSE of the posterior mean under the training prior — the floor for any estimator on this "
             "data (Monte-Carlo error ≈ RMSE / sqrt(2 · n_bayes)); RMSE / Bayes close to 1 means the network is "
             "as good as possible on matched synthetic data.", "",
             "## Summary", "",
             "| model | network | epochs (best) | stop | train time s | mean MAPE | mean RMSE / Bayes limit |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        stop = "time box" if s["time_boxed"] else ("early" if s["early_stopped"] else "max epochs")
        lines.append(f"| {s['model']} | {s['net']} | {s['epochs']} ({s['best_epoch']}) | {stop} | {s['time_s']:.0f} | "
                     f"{s['mean_mape']:.3f} | {s['mean_ratio']:.3f} |")
    lines += ["", "## Per-parameter tables", ""] + sections
    md = out_stem.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(out_stem.with_suffix(".csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _plot(rows, models, nets, out_stem.with_suffix(".png"))
    if done:
        print(f"wrote {md}, {out_stem.with_suffix('.csv')}, {out_stem.with_suffix('.png')} ({total / 60:.1f} min)")


def _plot(rows, models, nets, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * len(models), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), i + 1)
        params = list(dict.fromkeys(r["parameter"] for r in rows if r["model"] == model))
        x = np.arange(len(params))
        wbar = 0.8 / len(nets)
        for j, net in enumerate(nets):
            vals = [next((r["rmse_over_bayes"] for r in rows if r["model"] == model and r["net"] == net
                          and r["parameter"] == p), np.nan) for p in params]
            ax.bar(x + (j - (len(nets) - 1) / 2) * wbar, vals, wbar, label=net)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(x)
        ax.set_xticklabels(params, rotation=30, fontsize=8)
        ax.set_ylabel("RMSE / Bayes-limit RMSE")
        ax.set_title(model)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
