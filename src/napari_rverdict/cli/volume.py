"""``rverdict phantom | predict | fit | compare`` (registered by :mod:`napari_rverdict.cli`): maps from volumes.

Heavy imports happen inside the command functions so ``rverdict --help`` stays fast. Bad input raises
InputError (CliError), which ``cli.main`` prints as one line (exit 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

from napari_rverdict.cli.common import (
    CliError,
    add_prediction_options,
    add_protocol_option,
    cli_bundle,
    cli_device,
    cli_model,
    positive_int,
    protocol_inputs,
    self_supervised_sigma,
)


def _bar(total: int, desc: str, quiet: bool):
    """A tqdm bar and a ``progress(done, total)`` callback that moves it."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="vox", desc=desc, file=sys.stderr, disable=quiet, dynamic_ncols=True,
               delay=1.0)  # shown only for work that lasts: an error found at once stays one line

    def progress(done: int, n: int) -> None:
        if bar.total != n:
            bar.total = n
        bar.update(done - bar.n)

    return bar, progress


def _report_written(paths, out) -> None:
    print(f"wrote {len(paths)} maps to {out}: {', '.join(Path(p).name.split('.')[0] for p in paths)}")


# ---------------------------------------------------------------------- commands
def cmd_phantom(args) -> int:
    from napari_rverdict.data.phantom import PHANTOM_FILES
    from napari_rverdict.files import check_output_dir

    names = [n for n in PHANTOM_FILES if n != "truth"]
    inputs = protocol_inputs(args.protocol)  # --protocol a/dwi.bval --out a: the files read are not replaced
    check_output_dir(args.out, names, overwrite=args.overwrite, inputs=inputs)  # before the heavy imports
    from napari_rverdict.data.phantom import make_phantom, save_phantom
    from napari_rverdict.physics.models import get_model
    from napari_rverdict.physics.protocol_files import load_protocol

    truth = [f"truth/{n}.nii.gz" for n in (*get_model("rverdict").map_names, "S0")]
    check_output_dir(args.out, names + truth, overwrite=args.overwrite, inputs=inputs)
    protocol = load_protocol(args.protocol, tr=args.tr)  # as acquired: the DWI gets one volume per entry
    if args.snr <= 0:
        raise CliError(f"--snr must be positive, got {args.snr:g}")
    ph = make_phantom(tuple(args.shape), snr=args.snr, seed=args.seed, protocol=protocol,
                      snr_reference=args.snr_reference, tissue=args.tissue)
    written = save_phantom(ph, args.out, overwrite=args.overwrite)  # --out checked above, before the work
    n_les = int(ph.lesion_mask.sum())
    print(f"wrote the {'×'.join(map(str, ph.shape))} prostate phantom (SNR {args.snr:g}, seed {args.seed}; "
          f"{int(ph.mask.sum())} gland voxels, {n_les} lesion voxels) to {args.out}: {len(written)} files")
    return 0


def _check_out(args, map_names, inputs) -> None:
    """Refuse ``--out`` before any long work: empty, a file, holding other files (without --overwrite), or a map
    file that is an input (the DWI, its protocol and sidecars, the mask, ``inputs``). With --overwrite only the
    map files are replaced. ``map_names`` None: the checks that need no names, before the heavy imports (the
    names come from the model or bundle); a missing DWI or mask is found here too."""
    from napari_rverdict.files import check_output_dir

    inputs = [*protocol_inputs(args.dwi, args.protocol), args.mask, *inputs]
    if map_names is None:
        check_output_dir(args.out, (), overwrite=args.overwrite, inputs=inputs)
        if not Path(args.dwi).exists():
            raise CliError(f"DWI file not found: {args.dwi}")
        if args.mask is not None and not Path(args.mask).exists():
            raise CliError(f"mask file not found: {args.mask}")
        return
    from napari_rverdict.physics.models import FIT_NRMSE

    names = [f"{n}.nii.gz" for n in (*map_names, FIT_NRMSE)]  # every method also writes its fit quality
    check_output_dir(args.out, names, overwrite=args.overwrite, inputs=inputs)


def _maps_of_volume(args, what: str, model, make) -> int:
    """What ``predict`` and ``fit`` share: the device, the DWI, the mask, a progress bar, and writing the maps.
    ``make(dwi, mask, device, progress)`` makes the maps; ``what`` names the method on the bar."""
    from napari_rverdict.data.dwi import load_dwi_as_named
    from napari_rverdict.data.map_files import save_maps

    device = cli_device(args.device)
    dwi = load_dwi_as_named(args.dwi, args.protocol, tr=args.tr)  # --protocol innovate on 20 volumes: innovate-20
    bar, progress = _bar(0, f"{what} on {device}", args.quiet)  # the mask's existence: _check_out, before any work
    try:
        maps = make(dwi, args.mask, str(device), progress)
    finally:
        bar.close()
    # _check_out refused, before the work, a folder holding files without --overwrite (with it, only the maps)
    _report_written(save_maps(maps, args.out, dwi.affine, model=model, overwrite=args.overwrite), args.out)
    return 0


def cmd_predict(args) -> int:
    _check_out(args, None, [args.model])
    from napari_rverdict.maps.predict import predict_volume

    bundle = cli_bundle(args.model)
    names = list(bundle.map_names)
    if args.uncertainty:
        names += [f"{n}_sd" for n in bundle.map_names]
    _check_out(args, names, [args.model])

    def make(dwi, mask, device, progress):
        import warnings

        from napari_rverdict.data.noise_estimate import noise_mismatch

        if (line := noise_mismatch(bundle, dwi, mask)) is not None:
            warnings.warn(line, stacklevel=1)  # printed by main as one line
        return predict_volume(bundle, dwi, None, mask, uncertainty=args.uncertainty, device=device,
                              chunk=args.chunk, progress=progress)

    return _maps_of_volume(args, bundle.net_name, bundle.model, make)


def cmd_fit(args) -> int:
    _check_out(args, None, [args.init, *_sigma_inputs(args)])
    model = cli_model(args.model)
    if args.method == "self-supervised":
        return _fit_self_supervised(args, model)
    from napari_rverdict.maps.nlls import fit_volume

    if args.epochs is not None or args.sigma is not None:
        raise CliError("--epochs and --sigma apply to --method self-supervised")
    _check_out(args, model.map_names, [args.init])
    init = cli_bundle(args.init) if args.init else None
    return _maps_of_volume(args, f"NLLS {model.name}", model, lambda dwi, mask, device, progress: fit_volume(
        model, dwi, None, mask, device=device, init=init, progress=progress,
        n_starts=4 if args.starts is None else args.starts, max_iter=args.max_iter or 1000, seed=args.seed))


def _fit_self_supervised(args, model) -> int:
    """``fit --method self-supervised``: the encoder trained on this DWI's voxels; the bar counts epochs."""
    from napari_rverdict.maps.self_supervised import fit_self_supervised

    nlls_only = [o for o, v in (("--init", args.init), ("--starts", args.starts), ("--max-iter", args.max_iter))
                 if v is not None]
    if nlls_only:
        raise CliError(f"{', '.join(nlls_only)} apply to --method nlls")
    epochs = 500 if args.epochs is None else args.epochs
    _check_out(args, model.map_names, _sigma_inputs(args))
    sigma = _sigma_of(args.sigma)

    def make(dwi, mask, device, progress):
        s = sigma(dwi) if callable(sigma) else sigma
        return fit_self_supervised(model, dwi, None, mask, device=device, epochs=epochs, seed=args.seed, sigma=s,
                                   progress=lambda rec: progress(rec.epoch, rec.n_epochs))

    return _maps_of_volume(args, f"self-supervised {model.name} (epochs)", model, make)


def _sigma_inputs(args) -> list:
    """The noise-map file ``--sigma`` names, as an input of the output checks (none for a number or a word)."""
    return [args.sigma] if args.sigma not in (None, "auto", "mse") else []


def _sigma_of(text):
    """``--sigma``: as :func:`.common.self_supervised_sigma`, or a 3D NIfTI noise map read on the DWI's grid."""
    if text is not None and Path(text).exists():
        from napari_rverdict.data.label_files import load_on_grid

        return lambda dwi: load_on_grid(text, dwi, "sigma map")
    try:
        return self_supervised_sigma(text)
    except CliError:
        raise CliError(f"--sigma expects 'auto', 'mse', a positive number or a noise-map NIfTI file; got {text}") \
            from None


def cmd_compare(args) -> int:
    from napari_rverdict.data.phantom import label_names_file
    from napari_rverdict.files import check_distinct_outputs, check_output_file

    for d in (args.dir_a, args.dir_b):
        if not Path(d).is_dir():
            raise CliError(f"not a directory of maps: {d}")
    for option, path in (("--labels", args.labels), ("--mask", args.mask)):
        if path is not None and not Path(path).is_file():
            raise CliError(f"{option} file not found: {path}")
    inputs = [args.labels, args.mask, *sorted(Path(args.dir_a).iterdir()), *sorted(Path(args.dir_b).iterdir())]
    if args.labels is not None:
        inputs.append(label_names_file(args.labels))  # the label names beside it
    outputs = [("--csv", args.csv)]
    if args.roi_csv is not None:
        outputs += [(f"--roi-csv (of {d})", _roi_csv_path(args.roi_csv, d)) for d in (args.dir_a, args.dir_b)]
    check_distinct_outputs(outputs)  # e.g. --csv r_net.csv --roi-csv r.csv of net/: one would replace the other
    for what, path in outputs:
        if path is not None:
            check_output_file(path, overwrite=args.overwrite, inputs=inputs, what=what.split()[0])
    from napari_rverdict.data.label_files import load_labels, load_mask
    from napari_rverdict.data.map_files import load_maps
    from napari_rverdict.data.phantom import label_names_beside
    from napari_rverdict.maps.compare import compare_maps, roi_statistics

    maps_a, maps_b = load_maps(args.dir_a), load_maps(args.dir_b)
    grid = (next(iter(maps_a.values())).shape, _affine_of(args.dir_a))
    labels = load_labels(args.labels, grid) if args.labels else None
    mask = load_mask(args.mask, grid) if args.mask else None
    names = label_names_beside(args.labels) if args.labels else None
    # Everything is computed (and every input checked: an all-zero label image) before anything is printed or
    # written.
    table = compare_maps(maps_a, maps_b, mask=mask, labels=labels, model=args.model, label_names=names,
                         names=(Path(args.dir_a).name or "A", Path(args.dir_b).name or "B"))
    rois = [] if labels is None else [(d, roi_statistics(maps, labels, names, mask=mask))
                                      for d, maps in ((args.dir_a, maps_a), (args.dir_b, maps_b))]
    print(table.format_table())
    for d, roi in rois:
        print(f"\nROI statistics of {d}")
        print(roi.format_table())
    if args.csv:
        table.to_csv(args.csv, overwrite=args.overwrite)
        print(f"wrote {args.csv}")
    if args.roi_csv:
        for d, roi in rois:
            path = _roi_csv_path(args.roi_csv, d)
            roi.to_csv(path, overwrite=args.overwrite)
            print(f"wrote {path}")
    return 0


def _roi_csv_path(roi_csv, directory) -> Path:
    stem = Path(roi_csv)
    return stem.with_name(f"{stem.stem}_{Path(directory).name or 'maps'}{stem.suffix or '.csv'}")


def _affine_of(directory):
    """The affine of the first NIfTI map in ``directory`` (maps of one directory share their grid)."""
    import nibabel as nib

    from napari_rverdict.data.nifti import NIFTI_SUFFIXES

    files = sorted(p for p in Path(directory).iterdir() if p.name.endswith(NIFTI_SUFFIXES))
    if not files:
        raise CliError(f"no NIfTI maps in {directory}")
    return nib.load(str(files[0])).affine


# ---------------------------------------------------------------------- registration
def _volume_options(p) -> None:
    """Options every command that makes maps of a DWI shares: --protocol/--tr (default: the DWI's sidecar), --mask,
    --out, --quiet."""
    add_protocol_option(p, default=None,
                        default_help="the sidecar beside the DWI, e.g. dwi.bval + dwi.delta/.smalldel/.te/.tr")
    p.add_argument("--mask", default=None, help="mask NIfTI on the DWI's grid (default: Otsu on the mean b = 0)")
    p.add_argument("--out", required=True, help="output directory for the maps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _overwrite_option(p)


def _overwrite_option(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (only those this command writes; others are left alone)")


def register(sub) -> None:
    from napari_rverdict.data.phantom import TISSUES

    p = sub.add_parser("phantom", help="write the digital prostate phantom (NIfTI DWI, protocol, labels, truth)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--snr", type=float, default=35.0, help="SNR on --snr-reference's scale (default: %(default)s)")
    p.add_argument("--snr-reference", default="s0", choices=("s0", "peak"),
                   help="s0: one σ = 1000 / SNR on every volume and in the air, as a scanner and the shipped sample; "
                        "peak: σ = each voxel's brightest / SNR, no signal in the air (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tissue", default="anatomy", choices=TISSUES,
                   help="anatomy: each region's tissue, varying smoothly; prior: every gland voxel drawn from the "
                        "training prior (a phantom to check sd-map coverage on) (default: %(default)s)")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 64, 8), metavar=("X", "Y", "Z"),
                   help="voxels (default: 64 64 8; 1.25 × 1.25 × 5 mm each)")
    add_protocol_option(p, default="innovate-20")
    _overwrite_option(p)
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("predict", help="maps of a 4D DWI from a trained model bundle")
    p.add_argument("model", help="model bundle (.pt) from `rverdict train`")
    p.add_argument("dwi", help="4D DWI NIfTI (.nii / .nii.gz)")
    _volume_options(p)
    add_prediction_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("fit", help="maps of a 4D DWI by fitting the model: NLLS (batched Levenberg–Marquardt) or "
                       "self-supervised (an encoder trained on the DWI's own voxels)")
    p.add_argument("dwi", help="4D DWI NIfTI (.nii / .nii.gz)")
    p.add_argument("--model", default="rverdict", help="verdict or rverdict (default: %(default)s)")
    p.add_argument("--method", choices=("nlls", "self-supervised"), default="nlls",
                   help="nlls (default) or self-supervised (ssVERDICT; needs ≥ 100 mask voxels)")
    _volume_options(p)
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: %(default)s)")
    p.add_argument("--starts", type=int, default=None,
                   help="NLLS: starts per voxel from screened prior draws (default: 4)")
    p.add_argument("--init", default=None, help="NLLS: a model bundle whose prediction is one more start per voxel")
    p.add_argument("--max-iter", type=positive_int, default=None,
                   help="NLLS: Levenberg–Marquardt iterations at most (default: 1000)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="self-supervised: epochs at most; held-out voxels stop it sooner (default: 500)")
    p.add_argument("--sigma", default=None, metavar="S|FILE",
                   help="self-supervised: the noise level for the Rician likelihood loss: 'auto' (default: "
                        "estimated from the DWI, as `rverdict noise` does; MSE with a warning where it cannot be), "
                        "a number in the DWI's units, a 3D noise-map NIfTI, or 'mse'")
    p.add_argument("--seed", type=int, default=0, help="seed of the NLLS starts / the self-supervised training")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("compare", help="MSE / MAPE between two directories of maps, and ROI statistics")
    p.add_argument("dir_a", help="directory of maps (e.g. a network's)")
    p.add_argument("dir_b", help="directory of maps (e.g. the NLLS fit or the phantom's truth)")
    p.add_argument("--labels", default=None, help="label NIfTI (e.g. lesion ROIs): per-label rows and ROI stats")
    p.add_argument("--mask", default=None, help="mask NIfTI (default: voxels non-zero in both)")
    p.add_argument("--model", default=None, help="model whose ranges scale MAPE (default: any that knows the map)")
    p.add_argument("--csv", default=None, help="write the comparison table as CSV")
    p.add_argument("--roi-csv", default=None, help="write the ROI statistics as CSV (one file per directory)")
    _overwrite_option(p)
    p.set_defaults(func=cmd_compare)
