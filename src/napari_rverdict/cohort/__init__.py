"""Cohorts: many subjects' maps as tasks on Dask distributed (``rverdict cohort predict | fit``).

* :func:`read_subjects` — subjects from DWI paths, folders of DWIs or a cohort CSV (dwi / mask / labels / protocol).
* :class:`PredictTask`, :class:`FitTask` — what each subject's task does (a trained bundle; NLLS or self-supervised).
* :func:`run_cohort` — a LocalCluster sized to the machine or an existing scheduler; resumable; failures reported
  with their reason while the others go on; ``<out>/cohort.csv`` with each subject's status and ROI statistics.

Layer: above maps / evaluate, below cli and _napari (it imports neither). Dask is imported only when a cohort runs.
"""

from napari_rverdict.cohort.run import COHORT_CSV, CohortResult, run_cohort
from napari_rverdict.cohort.subjects import Subject, read_subjects
from napari_rverdict.cohort.tasks import DONE_FILE, FitTask, PredictTask

__all__ = ["COHORT_CSV", "DONE_FILE", "CohortResult", "FitTask", "PredictTask", "Subject", "read_subjects",
           "run_cohort"]
