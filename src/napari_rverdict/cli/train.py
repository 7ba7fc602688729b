"""``rverdict train`` and ``rverdict evaluate`` (registered by :mod:`napari_rverdict.cli`).

Heavy imports (torch, the trainer) happen inside the command functions so ``rverdict --help`` stays fast.
"""

from __future__ import annotations

import signal
import sys
import threading

from napari_rverdict.cli.common import (
    CliError,
    add_protocol_option,
    load_cli_protocol,
    positive_int,
    protocol_inputs,
)
from napari_rverdict.cli.noise import (
    add_snr_from_options,
    add_snr_reference_option,
    cli_noise_settings,
    print_effective_snr,
)
from napari_rverdict.data.noise import parse_snr

NETS = ("mlp", "resnetreg", "resnetreg-st")


def cmd_train(args) -> int:
    from napari_rverdict.files import check_output_file

    # Any file name is accepted (load_bundle reads the format marker, not the suffix); refuse an unusable or
    # existing output, or one that is an input (the protocol, the DWI whose noise is matched, their sidecars, its
    # mask), before the heavy imports and the (slow) simulation and training.
    check_output_file(args.out, overwrite=args.overwrite,
                      inputs=[*protocol_inputs(args.protocol, args.snr_from), args.snr_mask])
    from tqdm import tqdm

    from napari_rverdict.data.prior import FRACTION_SAMPLERS, parse_ranges, resolve_ranges
    from napari_rverdict.data.synth import simulate
    from napari_rverdict.learn.config import ProgressKind, TrainConfig
    from napari_rverdict.learn.device import resolve_device
    from napari_rverdict.learn.train import iter_training
    from napari_rverdict.physics.models import get_model

    device = resolve_device(args.device)  # fail before simulating
    config = TrainConfig(net=args.net, depth=args.depth, width=args.width, epochs=args.epochs,
                         batch_size=args.batch, lr=args.lr, patience=args.patience, device=str(device),
                         seed=args.seed, scheduler=args.scheduler, weight_decay=args.weight_decay,
                         uncertainty=args.uncertainty, snr_reference=args.snr_reference)
    config.validate()
    # Check every input before the (slow) simulation, so a bad one is a single error line.
    model = get_model(args.model)
    protocol = load_cli_protocol(args)
    model.check_protocol(protocol)
    ranges = resolve_ranges(model, parse_ranges(args.range))
    if args.sampler not in FRACTION_SAMPLERS:
        raise CliError(f"unknown fraction sampler '{args.sampler}'; choose one of: {', '.join(FRACTION_SAMPLERS)}")
    if args.n < 10:
        raise CliError(f"--n must be at least 10 (80/20 train/validation split), got {args.n}")
    noise = cli_noise_settings(args)
    print_effective_snr(model, protocol, noise, ranges, args.sampler, file=sys.stderr)
    print(f"simulating {args.n:,} {model.name} signals ({len(protocol)} measurements) …", file=sys.stderr)
    data = simulate(model, protocol, n=args.n, ranges=ranges, fraction_sampler=args.sampler, seed=args.seed,
                    **noise)

    stop = threading.Event()
    previous = None

    def on_sigint(signum, frame):  # first Ctrl-C: stop after this batch and save; second: abort
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after this batch (Ctrl-C again to abort) …", file=sys.stderr)

    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    result = None
    bar = tqdm(total=config.epochs, unit="epoch", desc=f"{config.net} on {device}", file=sys.stderr,
               disable=args.quiet, dynamic_ncols=True)
    try:
        for rec in iter_training(data, config, stop):
            if rec.kind is ProgressKind.BATCH:
                bar.set_postfix_str(f"batch {rec.batch}/{rec.n_batches} loss {rec.train_loss:.4g}")
            elif rec.kind is ProgressKind.EPOCH:
                bar.set_postfix_str(f"train {rec.train_loss:.4g} val {rec.val_loss:.4g} "
                                    f"best {rec.best_val_loss:.4g}@{rec.best_epoch}", refresh=False)
                bar.update(1)
            else:
                result = rec.result
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    h = result.history
    if not h["val_loss"]:  # Ctrl-C before the first batch: there are no trained weights to save
        print("rverdict train: stopped before any training step; no bundle written", file=sys.stderr)
        return 130
    path = result.bundle.save(args.out, overwrite=args.overwrite)
    how = "stopped by Ctrl-C" if result.stopped else (
        "early stopping" if result.epochs_run < config.epochs else "all epochs")
    best = h["val_loss"][h["best_epoch"] - 1] if h["best_epoch"] else float("nan")
    print(f"{result.epochs_run} epoch(s) ({how}) in {result.elapsed_s:.1f} s; best validation MSE {best:.4g} at "
          f"epoch {h['best_epoch']}; wrote {path}")
    return 0


def cmd_evaluate(args) -> int:
    from napari_rverdict.files import check_distinct_outputs, check_output_file

    outputs = (("--csv", args.csv), ("--plot", args.plot))
    check_distinct_outputs(outputs)
    for option, path in outputs:
        if path is not None:
            check_output_file(path, overwrite=args.overwrite, inputs=[args.bundle], what=option)
    from napari_rverdict.evaluate.metrics import evaluate
    from napari_rverdict.evaluate.plots import plot_predicted_vs_true
    from napari_rverdict.learn.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    snr = None if args.snr is None else parse_snr(args.snr, "--snr")
    report = evaluate(bundle, n=args.n, snr=snr, seed=args.seed, n_crlb=args.n_crlb, device=args.device,
                      bayes=args.bayes, n_bayes_test=args.bayes_signals, snr_reference=args.snr_reference)
    print(report.format_table())
    if args.csv:
        print(f"wrote {report.to_csv(args.csv, overwrite=args.overwrite)}")
    if args.plot:
        print(f"wrote {plot_predicted_vs_true(report, args.plot, overwrite=args.overwrite)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a network on synthetic signals and save a model bundle (.pt)")
    p.add_argument("--model", default="rverdict", help="verdict or rverdict (default: %(default)s)")
    # Choices are checked by TrainConfig.validate / simulate, so a bad value is one clear error line (exit 2).
    p.add_argument("--net", default="mlp", help=f"network: {', '.join(NETS)} (default: %(default)s)")
    p.add_argument("--depth", type=positive_int, default=None,
                   help="MLP: hidden layers; ResNetReg: Linear layers, 10 per stage + 1 (default: per model)")
    p.add_argument("--width", type=positive_int, default=None, help="units per layer (default: per model)")
    add_protocol_option(p)
    p.add_argument("--n", type=positive_int, default=100_000, help="synthetic signals, split 80/20 (default: %(default)s)")
    p.add_argument("--snr", default=None, help="SNR, or LOW-HIGH drawn per sample (default: 35)")
    add_snr_reference_option(p)
    add_snr_from_options(p)
    p.add_argument("--range", "--ranges", dest="range", action="append", metavar="NAME=LOW,HIGH",
                   help="override a training range (repeatable)")
    p.add_argument("--sampler", "--fraction-sampler", dest="sampler", default="dirichlet",
                   help="fraction sampler: dirichlet or tissue (default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=100)
    p.add_argument("--batch", type=positive_int, default=100, help="mini-batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--patience", type=int, default=20, help="early-stopping patience in epochs, 0 = off")
    p.add_argument("--scheduler", action="store_true", help="halve the learning rate on validation plateaus")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--uncertainty", action="store_true",
                   help="also predict a per-voxel sd for every map (mean + variance, β-NLL; intervals calibrated on a fresh synthetic set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output model bundle (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy of a model bundle on fresh synthetic data, with √CRLB")
    p.add_argument("bundle", help="a model bundle (.pt) written by 'rverdict train'")
    p.add_argument("--n", type=positive_int, default=10_000, help="fresh synthetic signals (default: %(default)s)")
    p.add_argument("--snr", default=None, help="SNR or LOW-HIGH (default: the bundle's training SNR)")
    add_snr_reference_option(p, "the bundle's")
    p.add_argument("--n-crlb", type=int, default=1000, help="signals for the median √CRLB (default: %(default)s)")
    p.add_argument("--seed", type=int, default=12345,
                   help="the evaluation signals are drawn from a seed derived from this one, never the training or "
                        "calibration data (default: %(default)s)")
    p.add_argument("--bayes", type=int, default=0, metavar="N",
                   help="also the Bayes-limit RMSE from an N-entry prior dictionary, e.g. 200000 (default: 0 = off)")
    p.add_argument("--bayes-signals", type=int, default=200, metavar="M",
                   help="signals for the Bayes limit (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--csv", default=None, help="also write the table as CSV")
    p.add_argument("--plot", default=None, help="also write predicted-vs-true scatter plots (PNG)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --csv / --plot")
    p.set_defaults(func=cmd_evaluate)
