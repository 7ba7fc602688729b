"""Running a cohort on Dask distributed: one task per subject, resumable, failures reported and the rest going on.

:func:`run_cohort` starts a ``LocalCluster`` sized by :func:`napari_rverdict.threads.worker_layout` (worker
processes × torch threads never more than the CPUs; one worker per GPU when there are GPUs) or connects to an
existing scheduler (``scheduler="tcp://host:8786"``: dask-jobqueue, Kubernetes, …). Subjects whose outputs are
complete are skipped; every other subject is a task; a task that fails is recorded with its one-line reason.
At the end ``<out>/cohort.csv`` (atomic) holds every subject's status and its ROI statistics (subject × label ×
map: n, mean, sd, median). Dask is the optional extra ``[cohort]``, imported only here and only when used.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from napari_rverdict.cohort.subjects import Subject
from napari_rverdict.cohort.tasks import (
    DONE_FILE,
    changed_inputs,
    completed_record,
    run_subject,
    task_identity,
    written_by_a_cohort,
)
from napari_rverdict.errors import InputError
from napari_rverdict.files import write_text
from napari_rverdict.threads import available_cpus, worker_layout

COHORT_CSV = "cohort.csv"
CSV_COLUMNS = ("subject", "status", "reason", "seconds", "label", "name", "map", "unit", "n", "mean", "sd", "median",
               "mean_sd")


def distributed():
    """The ``distributed`` module, or a clear InputError where the [cohort] extra is not installed."""
    try:
        import distributed as dd
    except ImportError:
        raise InputError("cohorts need Dask distributed: pip install 'napari-rverdict[cohort]' "
                         "(or pip install 'dask[distributed]')") from None
    return dd


@dataclass
class CohortResult:
    """What happened to every subject: ``status`` {subject: "done" | "skipped" | "failed"}, ``reasons`` {subject:
    one-line reason} for the failed ones, ``records`` {subject: completion record}, ``csv`` the cohort table's path,
    ``layout`` (workers, torch threads per worker) of a local cluster (None on an existing scheduler)."""

    status: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    records: dict[str, dict] = field(default_factory=dict)
    csv: Path | None = None
    layout: tuple[int, int] | None = None

    @property
    def failed(self) -> list[str]:
        return [s for s, st in self.status.items() if st == "failed"]

    def count(self, status: str) -> int:
        return sum(st == status for st in self.status.values())


def one_line_reason(exc: BaseException) -> str:
    """A failure as one line: bad input by its message, anything else with its type."""
    text = " ".join(str(exc).split())
    if isinstance(exc, (InputError, OSError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_cohort_out(out, subjects: list[Subject], task, *, overwrite: bool = False) -> Path:
    """Refuse ``out`` before any work: a file; a folder holding files that are not this cohort's; a subject folder
    that would replace an input; or subjects completed with another task (without ``overwrite``)."""
    from napari_rverdict.files import check_output_dir

    if out is None or not str(out).strip():
        raise InputError("--out is empty: give a folder")
    out = Path(out)
    names = {s.name for s in subjects}
    if any(n.casefold() == COHORT_CSV.casefold() for n in names):  # its folder would take the table's place
        raise InputError(f"a subject may not be named {COHORT_CSV} (the cohort's table); rename it in the CSV's "
                         "'subject' column")
    bundle = getattr(task, "bundle", None)  # PredictTask's model bundle: an input of every subject
    check_output_dir(out, [COHORT_CSV, *names], overwrite=True,
                     inputs=[bundle, *(p for s in subjects for p in (s.dwi, s.mask, s.labels))])
    for s in subjects:
        for p in (s.dwi, s.mask, s.labels, bundle):
            if p is not None and (out / s.name).resolve() in Path(p).resolve().parents:
                raise InputError(f"--out {out}: subject {s.name}'s folder would hold its input {p}; "
                                 "choose another folder")
    if out.is_dir() and not overwrite:
        foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name != COHORT_CSV
                         and p.name not in names and not (p / DONE_FILE).is_file())  # other subjects of a cohort
        foreign += sorted(f"{n}/" for n in names if (out / n).is_dir() and any(
            not p.name.startswith(".") for p in (out / n).iterdir()) and not written_by_a_cohort(out / n))
        if foreign:
            raise InputError(f"--out {out} holds files that are not this cohort's ({', '.join(foreign[:3])}"
                             f"{', …' if len(foreign) > 3 else ''}); choose another folder or pass --overwrite")
        wanted = task_identity(task)
        for s in subjects:
            record = completed_record(out, s.name)
            if record is None:
                continue
            then = record.get("task")
            if then != wanted and isinstance(then, dict) and {**then, "bundle_sha256": None} == {
                    **wanted, "bundle_sha256": None}:
                raise InputError(f"--out {out}: subject {s.name} was mapped with another version of the model "
                                 f"bundle {Path(task.bundle).name} (its file changed since); choose another folder "
                                 "or pass --overwrite to redo it")
            if then != wanted:
                raise InputError(f"--out {out}: subject {s.name} was mapped by another task "
                                 f"({_differences(then, wanted, record.get('method'), task.method)}); choose "
                                 "another folder or pass --overwrite to redo it")
            if changed := changed_inputs(record, s):
                raise InputError(f"--out {out}: subject {s.name}'s {' and '.join(changed)} changed since it was "
                                 "mapped; choose another folder or pass --overwrite to redo it")
    return out


SCHEDULER_TIMEOUT_S = 20.0


def _check_scheduler(dd, scheduler: str) -> None:
    """Connect to ``scheduler`` and read its handshake within SCHEDULER_TIMEOUT_S, in a thread of its own (this may be
    called where an event loop runs). ``dd.Client`` waits for the handshake without a limit: pointed at a server
    that is no Dask scheduler (the dashboard's port, another service) it hung for good, or read that server's
    reply as a frame length and raised MemoryError."""
    import asyncio
    import socket
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import urlsplit

    seconds = SCHEDULER_TIMEOUT_S
    where = urlsplit(scheduler if "://" in scheduler else f"tcp://{scheduler}")
    if where.scheme in ("tcp", "tls"):  # nothing listening: say so at once (Dask retries until its timeout)
        try:
            socket.create_connection((where.hostname, where.port or 8786), timeout=min(5.0, seconds)).close()
        except ConnectionRefusedError:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler}: nothing listens there (connection "
                             "refused); is the scheduler running, and is it its address (tcp://host:8786)?") from None
        except (OSError, ValueError):
            pass  # unresolvable, filtered, or a timeout: Dask's own connect below says why
    if where.scheme != "tcp":  # tls:// needs the client's security settings (dd.Client reads them): its check
        return

    async def handshake():
        comm = await asyncio.wait_for(dd.comm.connect(scheduler, timeout=seconds), seconds)  # reads the handshake
        comm.abort()

    with ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(asyncio.run, handshake()).result()
        except (asyncio.TimeoutError, TimeoutError) as exc:
            text = " ".join(str(exc).split())
            raise InputError(f"cannot reach the Dask scheduler at {scheduler}: " + (text or f"no Dask handshake "
                             f"within {seconds:g} s (is it a Dask scheduler's address, tcp://host:8786?)")) from None
        except (OSError, ValueError) as exc:  # refused, unreachable, or not an address
            raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {one_line_reason(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - a server that answered, but not as Dask does (MemoryError, …)
            raise InputError(f"the server at {scheduler} is no Dask scheduler: it answered, but not as Dask does "
                             f"({one_line_reason(exc)[:120]}); give the scheduler's address, tcp://host:8786") from None


def _differences(then, now: dict, then_method, now_method) -> str:
    """What differs between a completed subject's task and this one, as ``max_iter 200, now 1000; …``."""
    if then_method != now_method or not isinstance(then, dict):
        return f"{then_method}, now {now_method}"
    keys = [k for k in {**then, **now} if k != "bundle_sha256" and then.get(k) != now.get(k)]
    return "; ".join(f"{k} {then.get(k)!r}, now {now.get(k)!r}" for k in keys) or "its settings differ"


def _client(dd, scheduler, n_workers, threads, processes: bool):
    if scheduler is not None:
        _check_scheduler(dd, scheduler)
        try:
            return dd.Client(scheduler, timeout=f"{SCHEDULER_TIMEOUT_S:g}s"), None
        except (OSError, TimeoutError, ValueError) as exc:  # unreachable, or not an address
            raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {one_line_reason(exc)}") from None
    cluster = dd.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes,
                              dashboard_address=None, silence_logs=logging.CRITICAL)  # failures: our own line
    return dd.Client(cluster), cluster


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def task_gpus(task) -> int:
    """The GPUs a task's subjects would spread over on this machine: every visible one for "auto" / "cuda" (one
    worker each, :func:`.tasks.device_here` pins them), one for an explicit "cuda:N" (every task on it), none for
    "cpu" / "mps" (CPU workers: one per GPU would leave most of the CPUs idle)."""
    device = str(getattr(task, "device", "cpu")).lower().strip()
    if device not in ("auto", "cuda") and not device.startswith("cuda:"):
        return 0
    n = _gpus()
    return min(n, 1) if device.startswith("cuda:") else n


def run_cohort(subjects: list[Subject], task, out, *, scheduler: str | None = None, n_workers: int | None = None,
               threads_per_worker: int | None = None, processes: bool = True, overwrite: bool = False,
               progress: bool = True) -> CohortResult:
    """Map every subject with ``task`` (:class:`.tasks.PredictTask` / :class:`.tasks.FitTask`) on Dask.

    scheduler : address of an existing scheduler; None starts a LocalCluster of ``n_workers`` worker processes
        (``processes=False``: threads of this process) with ``threads_per_worker`` torch threads each (default
        :func:`worker_layout` for this machine's CPUs, GPUs and the number of subjects to run).
    overwrite : redo subjects that are complete (default: skip them) and accept a folder holding other files.
    progress : a progress bar (stderr) over the subjects.

    Returns a :class:`CohortResult`; ``<out>/cohort.csv`` is written in every case once the tasks have ended, and
    on Ctrl-C (KeyboardInterrupt, raised again) with the unfinished subjects' status "interrupted".
    """
    if scheduler is not None and not str(scheduler).strip():  # an unset variable: not a local cluster instead
        raise InputError("--scheduler is empty: give the scheduler's address (tcp://host:8786) or leave it out "
                         "for a local cluster")
    out = check_cohort_out(out, subjects, task, overwrite=overwrite)
    result = CohortResult()
    todo = []
    for s in subjects:
        record = None if overwrite else completed_record(out, s.name)
        if record is not None:
            result.status[s.name], result.records[s.name] = "skipped", record
        else:
            todo.append(s)
    if todo:
        dd = distributed()
        threads = threads_per_worker
        if scheduler is None:
            cpus = available_cpus(respect_env=False)  # OMP_NUM_THREADS limits a process's threads, not the workers
            layout = worker_layout(cpus, n_gpus=task_gpus(task), n_tasks=len(todo))
            n_workers = n_workers or layout[0]
            threads = threads or max(1, cpus // n_workers)
            result.layout = (n_workers, threads)
        try:
            _run(dd, todo, task, out, result, scheduler, n_workers, threads, processes, progress)
        except KeyboardInterrupt:  # Ctrl-C: the table still says what is done, and what a rerun will do
            for s in todo:
                if s.name not in result.status:
                    result.status[s.name] = "interrupted"
                    result.reasons[s.name] = "not finished: the cohort was interrupted (rerun the command to resume)"
            result.csv = write_cohort_csv(out, subjects, result, earlier_subjects(out, subjects, task))
            raise
    result.csv = write_cohort_csv(out, subjects, result, earlier_subjects(out, subjects, task))
    return result


def earlier_subjects(out: Path, subjects: list[Subject], task) -> dict[str, dict]:
    """{name: record} of the subjects completed in ``out`` by the same task that this run does not list (a cohort
    extended by a second run into the same folder): ``cohort.csv`` keeps them, in name order."""
    names, wanted, found = {s.name for s in subjects}, task_identity(task), {}
    if not out.is_dir():  # no subject's task made it (interrupted at once, or every one failed before writing)
        return found
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and p.name not in names):
        record = completed_record(out, folder.name)
        if record is not None and record.get("task") == wanted:
            found[folder.name] = record
    return found


def _run(dd, todo, task, out, result, scheduler, n_workers, threads, processes, progress) -> None:
    from tqdm import tqdm

    client, cluster = _client(dd, scheduler, n_workers, threads, processes)
    try:
        run_id = uuid.uuid4().hex[:8]  # keys unique on a scheduler that other cohorts share
        futures = {client.submit(run_subject, task, s, str(out.resolve()), threads,
                                 key=f"rverdict-{s.name}-{run_id}", pure=False, retries=0): s for s in todo}
        bar = tqdm(total=len(todo), unit="subject", desc="cohort", file=sys.stderr, disable=not progress,
                   dynamic_ncols=True)
        try:
            for fut in dd.as_completed(futures):
                s = futures[fut]
                try:
                    result.status[s.name], result.records[s.name] = "done", fut.result()
                except Exception as exc:  # the task's own error (or a lost worker): the others go on
                    reason = one_line_reason(exc)
                    result.status[s.name], result.reasons[s.name] = "failed", reason
                    if progress:  # at once, above the bar (the summary at the end lists them again)
                        bar.write(f"{s.name}: failed: {reason}", file=sys.stderr)
                bar.update(1)
        finally:
            bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def write_cohort_csv(out: Path, subjects: list[Subject], result: CohortResult,
                     earlier: dict[str, dict] | None = None) -> Path:
    """``<out>/cohort.csv``: one row per subject × label × map (done and skipped subjects), one row per failed
    subject with its reason; in the subjects' order, then ``earlier`` ({name: record}: subjects of the same task
    completed in ``out`` by an earlier run and not listed in this one, status "skipped")."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    rows_of = [(s.name, result.status.get(s.name, "failed"), result.reasons.get(s.name, ""),
                result.records.get(s.name) or {}) for s in subjects]
    rows_of += [(name, "skipped", "complete before; not listed in this run", record)
                for name, record in (earlier or {}).items()]
    for name, status, reason, record in rows_of:
        base = {"subject": name, "status": status, "reason": reason, "seconds": record.get("seconds", "")}
        rows = record.get("roi") or []
        if not rows:
            w.writerow(base)
        for r in rows:
            w.writerow({**base, **{k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS[4:]}})
    return write_text(out / COHORT_CSV, buf.getvalue())


__all__ = ["COHORT_CSV", "DONE_FILE", "CohortResult", "check_cohort_out", "distributed", "one_line_reason",
           "run_cohort", "write_cohort_csv"]
