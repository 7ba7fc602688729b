"""``rverdict cohort predict | fit`` (registered by :mod:`napari_rverdict.cli.main`): many subjects on Dask.

Bad input found before any work (a missing DWI, a bad CSV, a bad bundle, an unusable --out, no Dask) exits 2;
once the tasks run, a subject that fails is reported with its one-line reason, the others go on, and the exit code
is 1 when any failed. Heavy imports happen inside the command functions so ``rverdict --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from napari_rverdict.cli.common import (
    CliError,
    add_prediction_options,
    cli_bundle,
    cli_device,
    cli_model,
    positive_int,
    self_supervised_sigma,
)


def _subjects(args):
    from napari_rverdict.cohort import read_subjects

    return read_subjects(args.dwi, protocol=args.protocol)


def _run(args, task) -> int:
    from napari_rverdict.cohort import run_cohort

    if args.scheduler is None:  # local workers see this machine's devices: "cuda" without CUDA is bad input now,
        cli_device(args.device)  # not one failure per subject (another scheduler's workers may have GPUs)
    subjects = _subjects(args)
    result = run_cohort(subjects, task, args.out, scheduler=args.scheduler, n_workers=args.workers,
                        threads_per_worker=args.threads, overwrite=args.overwrite, progress=not args.quiet)
    where = (f"{result.layout[0]} local worker(s) × {result.layout[1]} torch thread(s)" if result.layout
             else f"the scheduler at {args.scheduler}" if args.scheduler else "no cluster (nothing to run)")
    print(f"cohort of {len(subjects)} on {where}: {result.count('done')} done, {result.count('skipped')} skipped "
          f"(complete before), {result.count('failed')} failed; wrote {result.csv}")
    for name in result.failed:
        print(f"  {name}: failed: {result.reasons[name]}")
    return 1 if result.failed else 0


def cmd_cohort_predict(args) -> int:
    from napari_rverdict.cohort import PredictTask

    cli_bundle(args.model)  # a bad bundle is bad input, found before any worker starts
    return _run(args, PredictTask(str(Path(args.model).resolve()), device=args.device, chunk=args.chunk,
                                  uncertainty=args.uncertainty))


def cmd_cohort_fit(args) -> int:
    from napari_rverdict.cohort import FitTask

    model = cli_model(args.model)
    if args.method != "self-supervised" and (args.epochs is not None or args.sigma is not None):
        raise CliError("--epochs and --sigma are options of --method self-supervised")
    return _run(args, FitTask(model.name, args.method, device=args.device, n_starts=args.starts,
                              max_iter=args.max_iter, seed=args.seed, epochs=args.epochs,
                              sigma=self_supervised_sigma(args.sigma)))


# ---------------------------------------------------------------------- registration
def _common(p) -> None:
    p.add_argument("dwi", nargs="+", help="DWIs (.nii / .nii.gz), folders of DWIs, or a cohort CSV with columns "
                                          "dwi and optional subject, mask, labels, protocol")
    p.add_argument("--out", required=True, help="output folder: <out>/<subject>/ maps and <out>/cohort.csv")
    p.add_argument("--protocol", default=None,
                   help="protocol of subjects whose CSV row names none: a preset (innovate, innovate-20; innovate "
                        "on a 20-volume DWI means innovate-20, as for `rverdict predict`) or a .scheme / .bval file "
                        "(default: each DWI's sidecar)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler (tcp://host:8786); default: a local cluster sized to this machine")
    p.add_argument("--workers", type=positive_int, default=None, help="local worker processes (default: from CPUs)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads per task (default: the CPUs divided among the workers)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo subjects that are complete (default: skip them, so a rerun resumes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    p = sub.add_parser("cohort", help="maps of many subjects on Dask distributed (rverdict cohort predict | fit)")
    csub = p.add_subparsers(dest="cohort_command", required=True)

    q = csub.add_parser("predict", help="maps of every subject from a trained model bundle")
    q.add_argument("model", help="model bundle (.pt) from `rverdict train`")
    _common(q)
    add_prediction_options(q)
    q.set_defaults(func=cmd_cohort_predict)

    f = csub.add_parser("fit", help="maps fitted to every subject (NLLS or self-supervised)")
    _common(f)
    f.add_argument("--model", default="rverdict", help="verdict or rverdict (default: %(default)s)")
    f.add_argument("--method", choices=("nlls", "self-supervised"), default="nlls",
                   help="batched Levenberg–Marquardt or the self-supervised fit (default: %(default)s)")
    f.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: %(default)s)")
    f.add_argument("--starts", type=positive_int, default=4, help="NLLS starts per voxel (default: %(default)s)")
    f.add_argument("--max-iter", type=positive_int, default=1000, help="NLLS iterations at most (default: %(default)s)")
    f.add_argument("--epochs", type=positive_int, default=None, help="self-supervised epochs (default: its own)")
    f.add_argument("--sigma", default=None, metavar="auto|S|mse",
                   help="self-supervised: the noise level for the Rician loss: 'auto' (default: estimated from each "
                        "DWI), a number in the DWIs' units, or 'mse' for the squared error")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_cohort_fit)
