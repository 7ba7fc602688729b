"""``rverdict protocol-report`` (registered by :mod:`napari_rverdict.cli`): which maps an acquisition supports;
``--compare A B`` prints two acquisitions side by side (the Explore dock's what-if).

Heavy imports (torch, the posterior) happen inside the command function so ``rverdict --help`` stays fast.
"""

from __future__ import annotations

import sys

from napari_rverdict.cli.common import (
    CliError,
    add_protocol_option,
    cli_device,
    cli_model,
    load_cli_protocol,
    protocol_inputs,
)
from napari_rverdict.cli.noise import add_snr_reference_option
from napari_rverdict.data.noise import parse_snr


def cmd_protocol_report(args) -> int:
    from napari_rverdict.files import check_output_file

    snr = parse_snr(args.snr, "--snr")
    if not isinstance(snr, float):
        raise CliError(f"--snr expects one number, got '{args.snr}'")
    if args.n_test < 2 or args.n_dictionary < 1:
        raise CliError("--n-test must be at least 2 and --n-dictionary at least 1")
    if args.csv is not None:  # before the heavy imports; never one of the protocol files read
        inputs = protocol_inputs(*(args.compare or [args.protocol]))
        check_output_file(args.csv, overwrite=args.overwrite, what="--csv", inputs=inputs)
    from napari_rverdict.data.synth import check_memory
    from napari_rverdict.evaluate.report import protocol_report

    model = cli_model(args.model)
    cli_device(args.device)
    if args.compare:
        return _compare(args, model, snr)
    protocol = load_cli_protocol(args)
    n_q = len(model.parameter_names) + len(model.map_names)
    check_memory(2.0 * args.n_dictionary * (4.0 * len(protocol) + 8.0 * n_q),
                 f"a {args.n_dictionary:,}-entry prior dictionary")  # before the CRLB work, not after it
    print(f"computing the Bayes limit ({args.n_test} signals, {args.n_dictionary:,}-entry dictionary) …",
          file=sys.stderr)
    report = protocol_report(args.model, protocol, snr, n_test=args.n_test, n_dictionary=args.n_dictionary,
                             fraction_sampler=args.sampler, seed=args.seed, device=args.device,
                             snr_reference=args.snr_reference or "s0")
    print(report.format_table())
    if args.csv:
        print(f"wrote {report.to_csv(args.csv, overwrite=args.overwrite)}")
    return 0


def _compare(args, model, snr) -> int:
    """``--compare A B``: the report of both protocols (same seed and prior draws), side by side."""
    from napari_rverdict.data.synth import check_memory
    from napari_rverdict.evaluate.protocol_design import compare_protocols
    from napari_rverdict.physics.protocol_files import load_protocol

    protocols = [load_protocol(p, tr=args.tr, direction_averaged=True) for p in args.compare]
    n_q = len(model.parameter_names) + len(model.map_names)
    for p in protocols:
        model.check_protocol(p)
        check_memory(2.0 * args.n_dictionary * (4.0 * len(p) + 8.0 * n_q),
                     f"a {args.n_dictionary:,}-entry prior dictionary")
    print(f"computing the Bayes limit of both protocols ({args.n_test} signals, {args.n_dictionary:,}-entry "
          "dictionary each) …", file=sys.stderr)
    cmp = compare_protocols(model, *protocols, snr, n_test=args.n_test, n_dictionary=args.n_dictionary,
                            fraction_sampler=args.sampler, seed=args.seed, device=args.device)
    print(cmp.format_table())
    if args.csv:
        print(f"wrote {cmp.to_csv(args.csv, overwrite=args.overwrite)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("protocol-report",
                       help="per map: √CRLB at typical tissue and the Bayes-limit RMSE for an acquisition")
    p.add_argument("--model", default="rverdict", help="verdict or rverdict (default: %(default)s)")
    add_protocol_option(p)
    p.add_argument("--snr", default="35", help="SNR on --snr-reference's scale (default: %(default)s)")
    add_snr_reference_option(p)
    p.add_argument("--n-test", type=int, default=200, help="prior draws for the Bayes limit (default: %(default)s)")
    p.add_argument("--n-dictionary", type=int, default=200_000,
                   help="prior dictionary entries for the posterior (default: %(default)s)")
    p.add_argument("--sampler", default="dirichlet", choices=("dirichlet", "tissue"), help="fraction sampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="compare two protocols (presets or .scheme / .bval files) side by side instead of --protocol")
    p.add_argument("--csv", default=None, help="also write the table as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --csv")
    p.set_defaults(func=cmd_protocol_report)
