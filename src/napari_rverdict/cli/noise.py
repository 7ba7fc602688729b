"""``rverdict noise DWI``: the scanner's σ and the per-voxel SNR of a DWI; the noise options other commands share
(``--snr-reference``, ``--snr-from`` / ``--mask``, exclusive with ``--snr``)."""

from __future__ import annotations

import json
import sys

from napari_rverdict.cli.common import CliError
from napari_rverdict.data.noise import SNR_REFERENCES, format_snr_percentiles, parse_snr


def add_snr_reference_option(p, default_text: str = "s0") -> None:
    p.add_argument("--snr-reference", default=None, choices=SNR_REFERENCES,
                   help="what SNR is relative to: s0 (σ = 1/SNR where S0 = 1, before T1/T2: the seed paper's) or "
                        f"peak (each voxel's brightest noise-free measurement) (default: {default_text})")


def add_snr_from_options(p) -> None:
    p.add_argument("--snr-from", default=None, metavar="DWI",
                   help="match this DWI's noise (instead of --snr): on s0, one SNR whose training set has the DWI's "
                        "95th percentile of the SNR at the brightest b = 0; on peak, each sample's SNR drawn from the "
                        "DWI's per-voxel SNR")
    p.add_argument("--mask", dest="snr_mask", default=None, metavar="MASK",
                   help="with --snr-from: the voxels whose SNR to match (NIfTI; default: mean b = 0 above 4σ)")


def cli_noise_settings(args) -> dict:
    """``simulate`` keyword arguments from --snr / --snr-from / --snr-mask / --snr-reference (checked, one line)."""
    if args.snr is not None and args.snr_from is not None:
        raise CliError("--snr and --snr-from are exclusive: give an SNR or a DWI to match its noise, not both")
    if args.snr_from is None:
        if args.snr_mask is not None:
            raise CliError("--mask needs --snr-from (the DWI whose noise to match)")
        return {"snr": parse_snr("35" if args.snr is None else args.snr, "--snr"),
                "snr_reference": args.snr_reference}
    from napari_rverdict.data.noise_estimate import estimate_noise

    est = estimate_noise(args.snr_from, args.snr_mask)
    print(f"noise of {args.snr_from}: {est.describe()}", file=sys.stderr)
    return {"snr": None, "snr_from": est.matched(), "snr_reference": args.snr_reference}


def print_effective_snr(model, protocol, noise: dict, ranges=None, sampler: str = "dirichlet", file=None) -> None:
    """One line: the effective-SNR distribution the noise setting implies (:func:`.synth.effective_snr`)."""
    from napari_rverdict.data.synth import effective_snr, matched_on_s0, matched_s0_snr
    from napari_rverdict.physics.models import get_model

    ref = noise.get("snr_reference") or "s0"
    chosen = ""
    if matched_on_s0(get_model(model), noise.get("snr_from"), ref):  # the one SNR the match chooses, found once
        snr = matched_s0_snr(model, protocol, noise["snr_from"], ranges, sampler)
        chosen = f"SNR {snr:.3g} matched on S0's scale; "
        noise = {"snr": snr, "snr_reference": ref}
    pct = effective_snr(model, protocol, ranges=ranges, fraction_sampler=sampler, n=5000, **noise)
    print(f"{chosen}effective SNR at each sample's brightest b = 0 ({ref} reference): {format_snr_percentiles(pct)}",
          file=file)


def cmd_noise(args) -> int:
    from napari_rverdict.data.noise_estimate import estimate_noise

    est = estimate_noise(args.dwi, args.mask, method=args.method)
    if args.json:
        print(json.dumps(est.to_json(args.reference)))
    else:
        print(est.describe())
    return 0


def register(sub) -> None:
    p = sub.add_parser("noise", help="estimate the scanner's noise σ and the per-voxel SNR of a DWI")
    p.add_argument("dwi", help="a 4D DWI (NIfTI with its .bval/.bvec or scheme), as acquired")
    p.add_argument("--mask", default=None, help="voxels for the SNR distribution (default: mean b = 0 above 4σ)")
    p.add_argument("--method", default="auto", choices=("auto", "piesno", "mppca", "repeats"),
                   help="σ estimator (default: auto = piesno, then mppca, then repeats)")
    p.add_argument("--reference", default="peak", choices=SNR_REFERENCES,
                   help="the SNR --json reports: peak (brightest b = 0) or s0 (b = 0 at TE = 0) (default: peak)")
    p.add_argument("--json", action="store_true", help='print {"sigma", "snr": {p5, median, p95}, "reference", '
                                                       '"method"}')
    p.set_defaults(func=cmd_noise)
