"""``rverdict simulate``: noisy synthetic signals with their truth, as one ``.npz``."""

from __future__ import annotations

from napari_rverdict.cli.common import add_protocol_option, load_cli_protocol, protocol_inputs
from napari_rverdict.cli.noise import (
    add_snr_from_options,
    add_snr_reference_option,
    cli_noise_settings,
    print_effective_snr,
)


def cmd_simulate(args) -> int:
    from napari_rverdict.files import check_output_file

    check_output_file(args.out, overwrite=args.overwrite, suffixes=(".npz",),
                      inputs=[*protocol_inputs(args.protocol, args.snr_from), args.snr_mask])
    from napari_rverdict.data.prior import parse_ranges
    from napari_rverdict.data.synth import simulate

    protocol = load_cli_protocol(args)
    noise = cli_noise_settings(args)
    ranges = parse_ranges(args.range)
    print_effective_snr(args.model, protocol, noise, ranges, args.sampler)
    data = simulate(args.model, protocol, n=args.n, ranges=ranges, fraction_sampler=args.sampler, seed=args.seed,
                    **noise)
    path = data.save(args.out, overwrite=args.overwrite)
    print(f"wrote {len(data)} {data.model.name} signals × {len(protocol)} measurements to {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("simulate", help="make noisy synthetic signals (.npz)")
    p.add_argument("--model", default="rverdict", help="verdict or rverdict (default: %(default)s)")
    add_protocol_option(p)
    p.add_argument("--n", type=int, default=100_000, help="number of signals")
    p.add_argument("--snr", default=None, help="SNR, or LOW-HIGH drawn per sample (default: 35)")
    add_snr_reference_option(p)
    add_snr_from_options(p)
    p.add_argument("--range", action="append", metavar="NAME=LOW,HIGH", help="override a training range")
    p.add_argument("--sampler", default="dirichlet", choices=("dirichlet", "tissue"), help="fraction sampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_simulate)
