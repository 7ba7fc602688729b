"""Cohorts on a 2-worker Dask LocalCluster: three tiny phantoms, one truncated on purpose; resume; CSV input; the
one-line errors before any work."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from napari_rverdict.cli.main import main  # noqa: E402
from napari_rverdict.cohort import DONE_FILE, FitTask, PredictTask, read_subjects, run_cohort  # noqa: E402
from napari_rverdict.errors import InputError  # noqa: E402
from napari_rverdict.threads import available_cpus  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIDECARS = (".bval", ".bvec", ".delta", ".smalldel", ".te", ".tr")


def _copy_dwi(src_dir: Path, dst: Path, stem: str, truncate: bool = False) -> Path:
    """``src_dir/dwi.nii.gz`` and its sidecars as ``dst/<stem>.nii.gz`` (the DWI cut to a third if ``truncate``)."""
    dst.mkdir(parents=True, exist_ok=True)
    data = (src_dir / "dwi.nii.gz").read_bytes()
    (dst / f"{stem}.nii.gz").write_bytes(data[: len(data) // 3] if truncate else data)
    for s in SIDECARS:
        shutil.copy(src_dir / f"dwi{s}", dst / f"{stem}{s}")
    return dst / f"{stem}.nii.gz"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Three 12 × 12 × 2 phantoms (SNR 200 on each voxel's brightest measurement, "peak": nearly noise-free, so
    the fits' ROI means sit near the truth) as sub-01, sub-02 and a truncated sub-03 in ``dwis/``; a tiny bundle."""
    from napari_rverdict.data.phantom import make_phantom, save_phantom
    from napari_rverdict.data.synth import simulate
    from napari_rverdict.learn.config import TrainConfig
    from napari_rverdict.learn.train import train
    from napari_rverdict.physics.protocol import Protocol

    root = tmp_path_factory.mktemp("cohort")
    for i in (1, 2, 3):
        save_phantom(make_phantom((12, 12, 2), snr=200.0, seed=i, snr_reference="peak"), root / f"ph{i}")
        _copy_dwi(root / f"ph{i}", root / "dwis", f"sub-0{i}", truncate=(i == 3))
    data = simulate("rverdict", Protocol.innovate(), n=600, seed=0)
    train(data, TrainConfig(net="mlp", epochs=2, seed=0, device="cpu")).bundle.save(root / "m.pt")
    return root


def _table(out: Path) -> list[dict]:
    with open(out / "cohort.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_cli_predict_on_a_process_cluster_reports_the_broken_subject_and_resumes(ws, capsys):
    out = ws / "out_predict"
    rc = main(["cohort", "predict", str(ws / "m.pt"), str(ws / "dwis"), "--out", str(out), "--workers", "2",
               "--quiet"])
    text = capsys.readouterr()
    assert rc == 1, text
    assert "2 done, 0 skipped (complete before), 1 failed" in text.out
    rows = _table(out)
    status = {r["subject"]: (r["status"], r["reason"]) for r in rows}
    assert status["sub-01"][0] == status["sub-02"][0] == "done"
    assert status["sub-03"][0] == "failed" and "truncated" in status["sub-03"][1].lower()
    assert "\n" not in status["sub-03"][1]
    for s in ("sub-01", "sub-02"):
        record = json.loads((out / s / DONE_FILE).read_text())
        assert record["torch_threads"] == max(1, available_cpus(respect_env=False) // 2)  # 2 workers share the CPUs
        assert {"f_ic.nii.gz", "cellularity.nii.gz"} <= set(record["maps"])
        assert all((out / s / m).is_file() for m in record["maps"])
        mapped = [r for r in rows if r["subject"] == s]
        assert {r["map"] for r in mapped} >= {"f_ic", "f_ees", "R", "cellularity"}
        assert all(int(r["n"]) > 0 for r in mapped)  # no labels given: the mapped voxels
    assert not (out / "sub-03" / DONE_FILE).exists()
    stamp = (out / "sub-01" / DONE_FILE).stat().st_mtime_ns

    rc = main(["cohort", "predict", str(ws / "m.pt"), str(ws / "dwis"), "--out", str(out), "--workers", "2",
               "--quiet"])
    text = capsys.readouterr()
    assert rc == 1 and "0 done, 2 skipped (complete before), 1 failed" in text.out
    assert (out / "sub-01" / DONE_FILE).stat().st_mtime_ns == stamp
    assert [r["status"] for r in _table(out) if r["subject"] == "sub-01"][0] == "skipped"
    # the same folder for another task (another chunk size) is refused before any work
    with pytest.raises(InputError, match="another task"):
        run_cohort(read_subjects([ws / "dwis"]), PredictTask(str(ws / "m.pt"), chunk=7), out,
                   processes=False, progress=False)


def test_fit_cohort_from_a_csv_gives_roi_statistics_near_the_truth(ws):
    """NLLS on two SNR-200 phantoms listed in a CSV with their labels and masks: the ROI means of f_ic per label
    come out near the phantom's true ROI means; the truncated third fails with its reason."""
    from napari_rverdict.data.label_files import load_labels
    from napari_rverdict.data.map_files import load_maps
    from napari_rverdict.data.phantom import LABEL_NAMES

    lines = ["subject,dwi,mask,labels"]
    for i in (1, 2, 3):
        dwi = "dwis/sub-0{0}.nii.gz".format(i)
        lines.append(f"p{i},{dwi},ph{i}/mask.nii.gz,ph{i}/labels.nii.gz")
    (ws / "cohort_in.csv").write_text("\n".join(lines) + "\n")
    subjects = read_subjects([ws / "cohort_in.csv"])
    assert [s.name for s in subjects] == ["p1", "p2", "p3"] and subjects[0].labels == ws / "ph1" / "labels.nii.gz"
    task = FitTask("rverdict", "nlls", device="cpu", n_starts=2, max_iter=200)
    result = run_cohort(subjects, task, ws / "out_fit", n_workers=2, threads_per_worker=1, processes=False,
                        progress=False)
    assert result.status == {"p1": "done", "p2": "done", "p3": "failed"}
    assert "truncated" in result.reasons["p3"].lower()
    rows = _table(ws / "out_fit")
    for i in (1, 2):
        labels = load_labels(ws / f"ph{i}" / "labels.nii.gz")
        truth = load_maps(ws / f"ph{i}" / "truth")
        for label in np.unique(labels[labels > 0]):
            inside = labels == label
            got = {r["map"]: r for r in rows if r["subject"] == f"p{i}" and int(r["label"] or 0) == label}
            assert all(int(r["n"]) == int(inside.sum()) for r in got.values())
            assert {r["name"] for r in got.values()} == {LABEL_NAMES[int(label)]}  # from phantom.json beside them
            if inside.sum() >= 10:  # the gland's zones (the lesions are 1-2 voxels at this size)
                assert float(got["f_ic"]["mean"]) == pytest.approx(float(truth["f_ic"][inside].mean()), abs=0.08)
                assert float(got["D_ees"]["median"]) == pytest.approx(float(np.median(truth["D_ees"][inside])),
                                                                      abs=0.15)
    assert [r for r in rows if r["subject"] == "p3"][0]["reason"] == result.reasons["p3"]


def test_roi_rows_are_named_from_the_phantom_json_beside_the_labels(tmp_path):
    """A subject's ROI rows carry the label names of a phantom.json beside its label image ("peripheral zone"),
    and "label N" where there is none or it cannot be read; the statistics are those of the maps in each label."""
    from napari_rverdict.cohort.subjects import Subject
    from napari_rverdict.cohort.tasks import _roi_rows
    from napari_rverdict.data.dwi import load_dwi
    from napari_rverdict.data.label_files import load_labels
    from napari_rverdict.data.map_files import load_maps
    from napari_rverdict.data.phantom import LABEL_NAMES, make_phantom, save_phantom

    save_phantom(make_phantom((12, 12, 2), snr=200.0, seed=1), tmp_path / "ph")
    dwi = load_dwi(tmp_path / "ph" / "dwi.nii.gz")
    truth = load_maps(tmp_path / "ph" / "truth")
    labels = load_labels(tmp_path / "ph" / "labels.nii.gz")
    for folder, meta in (("bare", None), ("broken", "{not json")):
        (tmp_path / folder).mkdir()
        shutil.copy(tmp_path / "ph" / "labels.nii.gz", tmp_path / folder / "labels.nii.gz")
        if meta is not None:
            (tmp_path / folder / "phantom.json").write_text(meta)
    present = [int(v) for v in np.unique(labels) if v != 0]
    assert 2 in present and LABEL_NAMES[2] == "peripheral zone"
    for folder, name_of in (("ph", LABEL_NAMES.__getitem__), ("bare", "label {}".format),
                            ("broken", "label {}".format)):
        subject = Subject("s", tmp_path / "ph" / "dwi.nii.gz", labels=tmp_path / folder / "labels.nii.gz")
        rows = _roi_rows(truth, subject, dwi)
        assert {(r["label"], r["name"]) for r in rows} == {(v, name_of(v)) for v in present}
        f_ic = {r["label"]: r for r in rows if r["map"] == "f_ic"}
        for v in present:
            assert f_ic[v]["n"] == int((labels == v).sum())
            assert f_ic[v]["mean"] == pytest.approx(float(truth["f_ic"][labels == v].mean()), rel=1e-6)


def test_a_cohort_reads_innovate_on_20_volumes_as_rverdict_predict_does(ws, tmp_path):
    """--protocol innovate (or a CSV protocol cell 'innovate') on a 20-volume DWI is the 20-volume acquisition, as
    for `rverdict predict`: the subject's maps are those of innovate-20, not a volume-count error."""
    from napari_rverdict.cohort.tasks import run_subject
    from napari_rverdict.data.map_files import load_maps

    task = PredictTask(str(ws / "m.pt"))
    for protocol in ("innovate", "innovate-20"):
        subject = read_subjects([ws / "dwis" / "sub-01.nii.gz"], protocol=protocol)[0]
        assert subject.protocol == protocol
        record = run_subject(task, subject, tmp_path / protocol, threads=1)
        assert record["status"] == "done"
    named, acquired = load_maps(tmp_path / "innovate" / "sub-01"), load_maps(tmp_path / "innovate-20" / "sub-01")
    assert set(named) == set(acquired) and "f_ic" in named
    for k in named:
        np.testing.assert_array_equal(named[k], acquired[k], err_msg=k)


def test_subjects_from_paths_folders_and_repeated_stems(ws, tmp_path):
    subjects = read_subjects([ws / "dwis"])
    assert [s.name for s in subjects] == ["sub-01", "sub-02", "sub-03"]
    for i in (1, 2):  # BIDS-like: every DWI called dwi.nii.gz, named by its folder
        _copy_dwi(ws / f"ph{i}", tmp_path / f"pat{i}", "dwi")
    named = read_subjects([tmp_path / "pat1" / "dwi.nii.gz", tmp_path / "pat2" / "dwi.nii.gz"], protocol="innovate-20")
    assert [(s.name, s.protocol) for s in named] == [("pat1", "innovate-20"), ("pat2", "innovate-20")]


def test_a_folder_lists_its_dwis_not_the_masks_labels_and_maps_beside_them(ws):
    """A phantom's folder (dwi, mask, labels; truth/ of maps): one subject per folder, named after it, not a
    subject per NIfTI (the mask and labels failed as 3D DWIs, and their stems repeated across folders)."""
    subjects = read_subjects([ws / "ph1", ws / "ph2"])
    assert [(s.name, s.dwi) for s in subjects] == [("ph1", ws / "ph1" / "dwi.nii.gz"),
                                                   ("ph2", ws / "ph2" / "dwi.nii.gz")]
    with pytest.raises(InputError, match=r"no DWI .* in the folder .*truth \(only single-volume images"):
        read_subjects([ws / "ph1" / "truth"])
    assert [s.name for s in read_subjects([ws / "dwis"])] == ["sub-01", "sub-02", "sub-03"]  # truncated: kept


@pytest.mark.parametrize("items, message", [
    (["nothing.nii.gz"], "DWI not found"),
    (["notes.txt"], "neither a DWI"),
    (["dwis/sub-01.nii.gz", "dwis/sub-01.nii.gz"], "listed twice"),
    (["bad.csv"], "needs a 'dwi' column"),
    (["missing.csv"], "cohort CSV not found"),
    (["no_protocol.csv"], "subject sub-02: protocol .*gone.bval: protocol file not found"),
    (["bad_preset.csv"], "subject sub-01: protocol innovat"),
])
def test_bad_subject_lists_are_one_line_errors(ws, items, message):
    (ws / "bad.csv").write_text("image,mask\nx.nii.gz,\n")
    (ws / "no_protocol.csv").write_text("dwi,protocol\ndwis/sub-01.nii.gz,\ndwis/sub-02.nii.gz,gone.bval\n")
    (ws / "bad_preset.csv").write_text("dwi,protocol\ndwis/sub-01.nii.gz,innovat\n")
    with pytest.raises(InputError, match=message):
        read_subjects([ws / i for i in items])


def test_messy_cohort_csvs(ws, tmp_path):
    """A spreadsheet's CSV: ';'-separated (a comma-decimal locale's export) is read; a column given twice, a row
    with more cells than the header, subject names that differ only in case, a hidden name and one that is the
    cohort table's are refused before any work (they were read silently: the first dwi column's paths and a row's
    cut-off rest dropped, two subjects sharing one folder on macOS, the table's write failing after every task).
    Columns of the trial's own (age, site) are read past with a warning; a near-miss of a column name is a typo."""
    from napari_rverdict.cohort.run import check_cohort_out

    d1, d2 = ws / "dwis" / "sub-01.nii.gz", ws / "dwis" / "sub-02.nii.gz"
    (tmp_path / "semi.csv").write_text(f"subject;dwi;mask\np1;{d1};{ws / 'ph1' / 'mask.nii.gz'}\n")
    assert [(s.name, s.dwi, s.mask) for s in read_subjects([tmp_path / "semi.csv"])] == [
        ("p1", d1, ws / "ph1" / "mask.nii.gz")]
    cases = {"dwi,DWI\n{d1},{d2}\n": "has the column.s. dwi twice",
             "dwi\n{d1},{d2}\n": "row 2 has more cells than the header",
             "subject,dwi\nP1,{d1}\np1,{d2}\n": "P1, p1 repeat",
             "subject,dwi\n.p1,{d1}\n": "starts with '.'"}
    for k, (text, message) in enumerate(cases.items()):
        (tmp_path / f"{k}.csv").write_text(text.format(d1=d1, d2=d2))
        with pytest.raises(InputError, match=message):
            read_subjects([tmp_path / f"{k}.csv"])
    # a trial's spreadsheet has more columns: read past them with one warning; a near-miss of ours is a typo
    (tmp_path / "trial.csv").write_text(f"subject,dwi,age,site\np1,{d1},61,UCLH\n")
    with pytest.warns(UserWarning, match="column.s. age, site not used"):
        assert [(s.name, s.dwi) for s in read_subjects([tmp_path / "trial.csv"])] == [("p1", d1)]
    (tmp_path / "typo.csv").write_text(f"dwi,labesl\n{d1},{ws / 'ph1' / 'labels.nii.gz'}\n")
    with pytest.raises(InputError, match="labesl .did you mean labels.."):
        read_subjects([tmp_path / "typo.csv"])
    (tmp_path / "ids.csv").write_text(f"subject,subject_id,dwi,labels,labels_v2\np1,17,{d1},,\n")  # both there
    with pytest.warns(UserWarning, match="subject_id, labels_v2 not used"):
        assert [s.name for s in read_subjects([tmp_path / "ids.csv"])] == ["p1"]
    (tmp_path / "table.csv").write_text(f"subject,dwi\nCohort.csv,{d1}\n")
    with pytest.raises(InputError, match="may not be named cohort.csv"):
        check_cohort_out(tmp_path / "out", read_subjects([tmp_path / "table.csv"]), FitTask())


def test_cli_errors_before_any_work_exit_2(ws, tmp_path, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["cohort", "predict", str(ws / "m.pt"), str(ws / "none.nii.gz"), "--out", str(tmp_path / "o")],
         "DWI not found"),
        (["cohort", "predict", str(ws / "m.pt"), str(ws / "dwis"), "--out", str(tmp_path / "a_file")], "is a file"),
        (["cohort", "predict", str(ws / "dwis" / "sub-01.bval"), str(ws / "dwis"), "--out", str(tmp_path / "o")],
         "bundle"),
        (["cohort", "fit", str(ws / "dwis"), "--model", "nope", "--out", str(tmp_path / "o")], "unknown model"),
        (["cohort", "fit", str(ws / "dwis"), "--method", "self-supervised", "--sigma", "loud", "--out",
          str(tmp_path / "o")], "--sigma must be 'auto', 'mse' or a positive number"),
        (["cohort", "fit", str(ws / "dwis"), "--sigma", "mse", "--out", str(tmp_path / "o")],
         "--epochs and --sigma are options of --method self-supervised"),
        (["cohort", "fit", str(ws / "dwis"), "--device", "tpu", "--out", str(tmp_path / "o")], "unknown device 'tpu'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    # a folder holding other files, and one mapped by another task, are refused too
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["cohort", "predict", str(ws / "m.pt"), str(ws / "dwis"), "--out", str(tmp_path / "busy")]) == 2
    assert "not this cohort's" in capsys.readouterr().err


def test_a_rerun_after_the_bundle_or_a_dwi_changed_is_refused_not_skipped(ws, tmp_path):
    """A completed subject counts as done only for the same bundle file (its SHA-256) and the same input files; the
    noise-mismatch warning of `rverdict predict` is in its record."""
    import os

    from napari_rverdict.data.synth import simulate
    from napari_rverdict.learn.config import TrainConfig
    from napari_rverdict.learn.train import train
    from napari_rverdict.physics.protocol import Protocol

    from napari_rverdict.data.phantom import make_phantom, save_phantom

    bundle = tmp_path / "m.pt"
    shutil.copy(ws / "m.pt", bundle)
    save_phantom(make_phantom((32, 32, 2), snr=200.0, seed=4), tmp_path / "ph")  # large enough to estimate σ
    _copy_dwi(tmp_path / "ph", tmp_path / "dwis", "sub-01")
    subjects, out = read_subjects([tmp_path / "dwis"]), tmp_path / "out"
    first = run_cohort(subjects, PredictTask(str(bundle)), out, processes=False, progress=False)
    assert first.status == {"sub-01": "done"}
    record = json.loads((out / "sub-01" / DONE_FILE).read_text())
    assert any("lies outside what the model was trained on" in w for w in record["warnings"])  # SNR 200 vs 35
    assert run_cohort(subjects, PredictTask(str(bundle)), out, processes=False, progress=False).status == {
        "sub-01": "skipped"}  # unchanged: resumed
    data = simulate("rverdict", Protocol.innovate(), n=600, seed=1)  # retrained under the same name
    train(data, TrainConfig(net="mlp", epochs=2, seed=1, device="cpu")).bundle.save(bundle, overwrite=True)
    with pytest.raises(InputError, match="another version of the model bundle m.pt"):
        run_cohort(subjects, PredictTask(str(bundle)), out, processes=False, progress=False)
    redo = run_cohort(subjects, PredictTask(str(bundle)), out, processes=False, progress=False, overwrite=True)
    assert redo.status == {"sub-01": "done"}
    dwi = tmp_path / "dwis" / "sub-01.nii.gz"
    os.utime(dwi, ns=(dwi.stat().st_atime_ns, dwi.stat().st_mtime_ns + 10**9))  # the subject's DWI rewritten
    with pytest.raises(InputError, match="sub-01's dwi changed since it was mapped"):
        run_cohort(subjects, PredictTask(str(bundle)), out, processes=False, progress=False)


def test_without_dask_a_clear_error(ws, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_distributed(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError("No module named 'distributed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    assert main(["cohort", "predict", str(ws / "m.pt"), str(ws / "dwis"), "--out", str(tmp_path / "o")]) == 2
    assert "napari-rverdict[cohort]" in capsys.readouterr().err


def test_self_supervised_cohort_maps_each_subject_with_fit_quality(tmp_path):
    """--method self-supervised: each subject's own encoder (a few epochs), its maps and fit_nrmse written, NaN
    outside the mask, and the subject marked done."""
    from napari_rverdict.data.map_files import load_maps
    from napari_rverdict.data.phantom import make_phantom, save_phantom

    save_phantom(make_phantom((24, 24, 2), snr=100.0, seed=5), tmp_path / "ph")
    subjects = read_subjects([tmp_path / "ph" / "dwi.nii.gz"])
    task = FitTask("rverdict", "self-supervised", device="cpu", epochs=3)
    result = run_cohort(subjects, task, tmp_path / "out", n_workers=1, threads_per_worker=1, processes=False,
                        progress=False)
    assert result.status == {"dwi": "done"}, result.reasons
    maps = load_maps(tmp_path / "out" / "dwi")
    mask = np.isfinite(maps["f_ic"])
    assert "fit_nrmse" in maps and np.array_equal(np.isfinite(maps["fit_nrmse"]), mask)
    assert 0 < mask.sum() < mask.size and np.all((maps["f_ic"][mask] >= 0) & (maps["f_ic"][mask] <= 1))
    assert (tmp_path / "out" / "dwi" / DONE_FILE).exists()


def test_an_existing_scheduler_is_used_as_given(ws):
    """--scheduler: the tasks go to a cluster someone else started (here a 2-worker LocalCluster of threads)."""
    from distributed import LocalCluster

    subjects = [s for s in read_subjects([ws / "dwis"]) if s.name != "sub-03"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        result = run_cohort(subjects, PredictTask(str(ws / "m.pt")), ws / "out_sched",
                            scheduler=cluster.scheduler_address, progress=False)
        assert len(cluster.workers) == 2  # it was not closed by the cohort
    assert result.layout is None and result.status == {"sub-01": "done", "sub-02": "done"}
    assert all(r["torch_threads"] >= 1 for r in result.records.values())


@pytest.mark.parametrize("reply", [None, b"HTTP/1.0 400 Bad request\r\n\r\n<html>not dask</html>\r\n"])
def test_a_scheduler_address_that_is_no_dask_scheduler_is_bad_input_in_time(ws, tmp_path, capsys, monkeypatch,
                                                                             reply):
    """--scheduler at a server that is no Dask scheduler (one that never answers; one that answers as a web server
    does, e.g. the dashboard's port): one line, exit 2, nothing written, within the timeout. Before, the client's
    handshake waited for good on the first and raised MemoryError (a 'bug', exit 1) on the second."""
    import socket
    import threading
    import time

    from napari_rverdict.cohort import run as run_module

    monkeypatch.setattr(run_module, "SCHEDULER_TIMEOUT_S", 2.0)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if reply is not None:
                conn.recv(65536)
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    out = tmp_path / "o"
    t0 = time.monotonic()
    try:
        rc = main(["cohort", "predict", str(ws / "m.pt"), str(ws / "dwis" / "sub-01.nii.gz"), "--out", str(out),
                   "--scheduler", f"tcp://127.0.0.1:{server.getsockname()[1]}", "--quiet"])
    finally:
        server.close()
        for conn in held:
            conn.close()
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Dask scheduler" in err, err
    assert time.monotonic() - t0 < 15 and not out.exists()


def test_an_empty_scheduler_address_is_refused_not_replaced_by_a_local_cluster(ws, tmp_path, capsys):
    """--scheduler "" (an unset variable): refused, where it ran on a local cluster and its summary said 'no
    cluster (nothing to run)'."""
    out = tmp_path / "o"
    assert main(["cohort", "predict", str(ws / "m.pt"), str(ws / "dwis" / "sub-01.nii.gz"), "--out", str(out),
                 "--scheduler", "", "--quiet"]) == 2
    assert "--scheduler is empty" in capsys.readouterr().err and not out.exists()


def test_a_rerun_with_other_settings_names_what_differs(ws, tmp_path):
    """The refusal names the setting that differs (it printed the old task's whole settings dict)."""
    from napari_rverdict.cohort.run import check_cohort_out
    from napari_rverdict.cohort.tasks import input_stamps, task_identity

    subjects = read_subjects([ws / "dwis" / "sub-01.nii.gz"])
    (tmp_path / "sub-01").mkdir()
    (tmp_path / "sub-01" / DONE_FILE).write_text(json.dumps(
        {"status": "done", "method": "nlls", "maps": [], "task": task_identity(FitTask(max_iter=200)),
         "inputs": input_stamps(subjects[0])}))
    with pytest.raises(InputError, match=r"mapped by another task \(max_iter 200, now 1000\); choose"):
        check_cohort_out(tmp_path, subjects, FitTask(max_iter=1000))
    with pytest.raises(InputError, match=r"mapped by another task \(nlls, now self-supervised\)"):
        check_cohort_out(tmp_path, subjects, FitTask(method="self-supervised"))
    assert check_cohort_out(tmp_path, subjects, FitTask(max_iter=200)) == tmp_path  # the same: resumed


def test_a_subject_folder_the_cohort_did_not_write_is_refused_and_the_table_keeps_earlier_subjects(ws, tmp_path):
    """Maps of a plain `rverdict fit` in a subject's folder are the user's, not a crashed task's: refused without
    overwrite (they were replaced). A crashed task's folder (its start marker, no record) is redone. A second run
    into the same folder with other subjects keeps the first run's in cohort.csv (they were dropped from it)."""
    from napari_rverdict.cohort.tasks import STARTED_FILE

    sub1, sub2 = read_subjects([ws / "dwis" / "sub-01.nii.gz"]), read_subjects([ws / "dwis" / "sub-02.nii.gz"])
    task = PredictTask(str(ws / "m.pt"))
    mine = tmp_path / "user" / "sub-01" / "f_ic.nii.gz"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own map")
    with pytest.raises(InputError, match="not this cohort's.*sub-01/"):
        run_cohort(sub1, task, tmp_path / "user", processes=False, progress=False)
    assert mine.read_bytes() == b"the user's own map"
    assert run_cohort(sub1, task, tmp_path / "user", processes=False, progress=False,
                      overwrite=True).status == {"sub-01": "done"}

    crashed = tmp_path / "crashed" / "sub-01"
    crashed.mkdir(parents=True)
    (crashed / STARTED_FILE).write_text("{}")
    (crashed / "f_ic.nii.gz").write_bytes(b"half")
    assert run_cohort(sub1, task, tmp_path / "crashed", processes=False, progress=False).status == {"sub-01": "done"}

    out = tmp_path / "grown"
    run_cohort(sub1, task, out, processes=False, progress=False)
    first = [r for r in _table(out) if r["subject"] == "sub-01"]
    result = run_cohort(sub2, task, out, processes=False, progress=False)
    assert result.status == {"sub-02": "done"}
    rows = _table(out)
    assert {r["status"] for r in rows if r["subject"] == "sub-02"} == {"done"}
    kept = [r for r in rows if r["subject"] == "sub-01"]
    assert kept and {r["status"] for r in kept} == {"skipped"} and "not listed in this run" in kept[0]["reason"]
    assert [(r["map"], r["mean"]) for r in kept] == [(r["map"], r["mean"]) for r in first]


def test_a_redo_that_fails_leaves_no_earlier_maps_beside_its_failure(ws, tmp_path):
    """--overwrite redoes a completed subject; when the redo fails (its DWI broke since), the earlier task's maps
    must not stay in the folder to be read as the current result (only the files its record listed go)."""
    dwi = _copy_dwi(ws / "ph1", tmp_path / "in", "sub-09")
    subject, task, out = read_subjects([dwi]), PredictTask(str(ws / "m.pt")), tmp_path / "out"
    assert run_cohort(subject, task, out, processes=False, progress=False).status == {"sub-09": "done"}
    (out / "sub-09" / "notes.txt").write_text("mine")
    _copy_dwi(ws / "ph1", tmp_path / "in", "sub-09", truncate=True)
    result = run_cohort(subject, task, out, processes=False, progress=False, overwrite=True)
    assert result.status == {"sub-09": "failed"}
    assert not list((out / "sub-09").glob("*.nii.gz")) and not (out / "sub-09" / DONE_FILE).exists()
    assert (out / "sub-09" / "notes.txt").read_text() == "mine"


def test_ctrl_c_leaves_a_table_of_what_is_done(ws, tmp_path, monkeypatch):
    """Ctrl-C during a cohort: cohort.csv still lists the subjects done (with their statistics) and the rest as
    interrupted (no table was written before), and the interrupt goes on to the caller."""
    import napari_rverdict.cohort.run as run_mod
    from napari_rverdict.cohort.tasks import run_subject

    def one_then_ctrl_c(dd, todo, task, out, result, *args):
        result.status[todo[0].name] = "done"
        result.records[todo[0].name] = run_subject(task, todo[0], out, 1)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "_run", one_then_ctrl_c)
    subjects = read_subjects([ws / "dwis" / "sub-01.nii.gz", ws / "dwis" / "sub-02.nii.gz"])
    with pytest.raises(KeyboardInterrupt):
        run_cohort(subjects, PredictTask(str(ws / "m.pt")), tmp_path / "out", processes=False, progress=False)
    rows = _table(tmp_path / "out")
    assert {r["status"] for r in rows if r["subject"] == "sub-01"} == {"done"}
    assert any(r["map"] == "f_ic" and r["mean"] for r in rows if r["subject"] == "sub-01")
    late = [r for r in rows if r["subject"] == "sub-02"]
    assert len(late) == 1 and late[0]["status"] == "interrupted" and "rerun the command" in late[0]["reason"]


def test_a_scheduler_address_where_nothing_listens_is_refused_at_once(ws, tmp_path, capsys):
    """Nothing listening at --scheduler (a stopped scheduler, a wrong port): one line, exit 2, in seconds — Dask's
    own connect retried until its 20-second timeout."""
    import socket
    import time

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # a port nothing listens on
    t0 = time.monotonic()
    rc = main(["cohort", "predict", str(ws / "m.pt"), str(ws / "dwis" / "sub-01.nii.gz"), "--out",
               str(tmp_path / "o"), "--scheduler", f"tcp://127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nothing listens there" in err and len(err.splitlines()) == 1, err
    assert time.monotonic() - t0 < 10


def test_ctrl_c_before_any_subject_and_all_failed_still_write_the_table(ws, tmp_path, monkeypatch):
    """--out does not exist until a subject's task makes it: Ctrl-C before any task, or every subject failing
    before it wrote anything, must still leave cohort.csv (the folder was listed, FileNotFoundError hid both)."""
    import napari_rverdict.cohort.run as run_mod

    def ctrl_c_at_once(*args):
        raise KeyboardInterrupt

    subjects = read_subjects([ws / "dwis" / "sub-01.nii.gz"])
    monkeypatch.setattr(run_mod, "_run", ctrl_c_at_once)
    with pytest.raises(KeyboardInterrupt):
        run_cohort(subjects, PredictTask(str(ws / "m.pt")), tmp_path / "a", processes=False, progress=False)
    assert [r["status"] for r in _table(tmp_path / "a")] == ["interrupted"]

    def all_fail(dd, todo, task, out, result, *args):
        for s in todo:
            result.status[s.name], result.reasons[s.name] = "failed", "the workers cannot see the DWI"

    monkeypatch.setattr(run_mod, "_run", all_fail)
    result = run_cohort(subjects, PredictTask(str(ws / "m.pt")), tmp_path / "b", processes=False, progress=False)
    assert result.status == {"sub-01": "failed"}
    rows = _table(tmp_path / "b")
    assert [(r["status"], r["reason"]) for r in rows] == [("failed", "the workers cannot see the DWI")]


def test_stems_that_repeat_but_for_case_are_named_by_their_folders(ws, tmp_path):
    """A/Sub-01.nii.gz and B/sub-01.nii.gz are one folder on macOS: named by their folders (A, B), as exact repeats
    are, not refused."""
    a = _copy_dwi(ws / "ph1", tmp_path / "A", "Sub-01")
    b = _copy_dwi(ws / "ph2", tmp_path / "B", "sub-01")
    assert [s.name for s in read_subjects([a, b])] == ["A", "B"]
