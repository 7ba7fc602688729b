"""Hostile and clumsy input to every command (issue 11's evidence): each case must give exactly one line on stderr,
exit code 2, and leave every file that existed before byte-identical (the workspace is hashed before and after)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_rverdict.cli import main

pytestmark = pytest.mark.filterwarnings("ignore")


def _tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: a tiny phantom, a tiny bundle, and broken files of every kind."""
    root = tmp_path_factory.mktemp("hostile")
    assert main(["phantom", "--out", str(root / "ph"), "--shape", "8", "8", "2"]) == 0
    assert main(["train", "--n", "300", "--epochs", "1", "--net", "mlp", "--device", "cpu", "--quiet",
                 "--out", str(root / "model.pt")]) == 0
    assert main(["simulate", "--n", "20", "--out", str(root / "sim.npz")]) == 0
    (root / "maps").mkdir()
    (root / "maps" / "f_ic.nii.gz").write_bytes(b"old map")
    (root / "empty_dir").mkdir()
    (root / "text.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI image"))
    (root / "plain.txt").write_text("hello\n")
    dwi = root / "ph" / "dwi.nii.gz"
    (root / "truncated.nii.gz").write_bytes(dwi.read_bytes()[: len(dwi.read_bytes()) // 3])
    (root / "garbage.pt").write_bytes(b"\x80\x04not a bundle at all")
    (root / "empty.pt").write_bytes(b"")
    (root / "bad.scheme").write_text("VERSION: 1\n1 0 0 abc 0.04 0.02 0.08\n")
    (root / "neg.bval").write_text("0 -1000 2000\n")
    (root / "short.bval").write_text("0 1000\n")
    (root / "labels_3d.npy").write_bytes(np.arange(4).tobytes())
    (root / "anat").mkdir()
    (root / "anat" / "T1.nii.gz").write_bytes(b"anatomy")
    shutil.copy(dwi, root / "anat" / "dwi.nii.gz")
    for ext in ("bval", "bvec", "delta", "smalldel", "te", "tr"):
        shutil.copy(root / "ph" / f"dwi.{ext}", root / "anat" / f"dwi.{ext}")
    _broken_acquisitions(root)
    return root


def _broken_acquisitions(root: Path) -> None:
    """DWIs whose header, geometry or sidecars are wrong in the ways real exports are."""
    import json

    import nibabel as nib

    ph = root / "ph"
    img = nib.load(str(ph / "dwi.nii.gz"))
    data = np.asarray(img.dataobj)

    def folder(name, *, sidecars=True):
        d = root / name
        d.mkdir()
        if sidecars:
            for ext in ("bval", "bvec", "delta", "smalldel", "te", "tr"):
                shutil.copy(ph / f"dwi.{ext}", d / f"dwi.{ext}")
        return d

    d = folder("huge")  # a header that declares 512 GB in a file of a few kB
    nib.save(nib.Nifti1Image(data, img.affine), str(d / "dwi.nii"))
    raw = bytearray((d / "dwi.nii").read_bytes())
    hdr = nib.Nifti1Header.from_fileobj(open(d / "dwi.nii", "rb"))
    hdr.set_data_shape((4000, 4000, 400, 20))
    raw[:348] = hdr.binaryblock
    (d / "dwi.nii").write_bytes(bytes(raw))
    for name, transform in (("nan_affine", np.where(np.eye(4, dtype=bool), np.nan, 0.0)),
                            ("zero_affine", np.diag([0.0, 0.0, 0.0, 1.0]))):
        d = folder(name)
        hdr = img.header.copy()
        hdr.set_qform(None, code=0)
        hdr.set_sform(img.affine, code=1)
        hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = transform[:3]
        nib.save(nib.Nifti1Image(data, None, hdr), str(d / "dwi.nii.gz"))
    d = folder("json_types", sidecars=False)  # JSON timings with wrong types
    shutil.copy(ph / "dwi.nii.gz", d / "dwi.nii.gz")
    shutil.copy(ph / "dwi.bval", d / "dwi.bval")
    (d / "dwi.json").write_text(json.dumps({"PulseDuration": "long", "PulseSeparation": 0.04, "EchoTime": 0.08}))
    d = folder("json_list", sidecars=False)
    shutil.copy(ph / "dwi.nii.gz", d / "dwi.nii.gz")
    shutil.copy(ph / "dwi.bval", d / "dwi.bval")
    (d / "dwi.json").write_text("[1, 2, 3]")
    d = folder("bval_short")  # 19 b-values, 20 directions, 20 volumes
    shutil.copy(ph / "dwi.nii.gz", d / "dwi.nii.gz")
    (d / "dwi.bval").write_text(" ".join((ph / "dwi.bval").read_text().split()[:-1]) + "\n")
    b = np.array((ph / "dwi.bval").read_text().split(), dtype=float)
    for name, scale in (("b_ms_um2", 1e-3), ("b_s_m2", 1e6)):
        d = folder(name)
        shutil.copy(ph / "dwi.nii.gz", d / "dwi.nii.gz")
        (d / "dwi.bval").write_text(" ".join(f"{x * scale:g}" for x in b) + "\n")
    d = folder("no_tr", sidecars=False)  # a Camino scheme: no TR
    shutil.copy(ph / "dwi.nii.gz", d / "dwi.nii.gz")
    from napari_rverdict.physics.protocol_files import load_protocol, write_scheme

    write_scheme(load_protocol(ph / "dwi.bval"), d / "dwi.scheme", write_tr=False)


# (command, what the one line must say): guards that name the right thing
NAMED = [
    ("predict {ws}/model.pt {ws}/huge/dwi.nii --out {ws}/out", "header declares 4000 × 4000 × 400 × 20"),
    ("predict {ws}/model.pt {ws}/nan_affine/dwi.nii.gz --out {ws}/out", "affine) has NaN"),
    ("predict {ws}/model.pt {ws}/zero_affine/dwi.nii.gz --out {ws}/out", "affine) is singular"),
    ("fit {ws}/nan_affine/dwi.nii.gz --out {ws}/out", "affine) has NaN"),
    ("predict {ws}/model.pt {ws}/json_types/dwi.nii.gz --out {ws}/out", "PulseDuration must be a number"),
    ("predict {ws}/model.pt {ws}/json_list/dwi.nii.gz --out {ws}/out", "must be an object"),
    ("predict {ws}/model.pt {ws}/bval_short/dwi.nii.gz --out {ws}/out", "dwi.bval has 19 b-values but dwi.bvec has 20"),
    ("predict {ws}/model.pt {ws}/b_ms_um2/dwi.nii.gz --out {ws}/out", "were ms/µm² given"),
    ("predict {ws}/model.pt {ws}/b_s_m2/dwi.nii.gz --out {ws}/out", "were s/m² given"),
    ("predict {ws}/model.pt {ws}/no_tr/dwi.nii.gz --out {ws}/out", "needs the TR of every measurement"),
    ("fit {ws}/no_tr/dwi.nii.gz --out {ws}/out", "TR"),
    ("predict {ws}/model.pt {ws}/truncated.nii.gz --protocol innovate-20 --out {ws}/out", "truncated"),
]


CASES = [
    # --- simulate: numbers, names, outputs
    "simulate --n 0 --out {ws}/new.npz",
    "simulate --n -5 --out {ws}/new.npz",
    "simulate --n abc --out {ws}/new.npz",
    "simulate --n 1000000000000 --out {ws}/new.npz",
    "simulate --snr 0 --out {ws}/new.npz",
    "simulate --snr -3 --out {ws}/new.npz",
    "simulate --snr 60-15 --out {ws}/new.npz",
    "simulate --snr abc --out {ws}/new.npz",
    "simulate --snr nan --out {ws}/new.npz",
    "simulate --snr 1e999 --out {ws}/new.npz",
    "simulate --model nope --out {ws}/new.npz",
    "simulate --sampler nope --out {ws}/new.npz",
    "simulate --range R=12,0.1 --out {ws}/new.npz",
    "simulate --range R=abc --out {ws}/new.npz",
    "simulate --range nope=0,1 --out {ws}/new.npz",
    "simulate --range R=nan,5 --out {ws}/new.npz",
    "simulate --range f_ic=-1,2 --out {ws}/new.npz",
    "simulate --protocol nope --out {ws}/new.npz",
    "simulate --protocol {ws}/missing.scheme --out {ws}/new.npz",
    "simulate --protocol {ws}/bad.scheme --out {ws}/new.npz",
    "simulate --protocol {ws}/neg.bval --out {ws}/new.npz",
    "simulate --seed abc --out {ws}/new.npz",
    "simulate --out {ws}/sim.npz",
    "simulate --out {ws}/sim.dat",
    "simulate --out {ws}/empty_dir",
    "simulate --out ''",
    "simulate --n 10",
    # --- train
    "train --n 300 --epochs 1 --out {ws}/model.pt",
    "train --n 300 --epochs 1 --out {ws}/empty_dir",
    "train --n 300 --epochs 1 --out ''",
    "train --net nope --n 300 --epochs 1 --out {ws}/new.pt",
    "train --epochs 0 --out {ws}/new.pt",
    "train --batch 0 --out {ws}/new.pt",
    "train --batch 1 --n 300 --epochs 1 --out {ws}/new.pt",
    "train --lr -1 --n 300 --epochs 1 --out {ws}/new.pt",
    "train --lr nan --n 300 --epochs 1 --out {ws}/new.pt",
    "train --lr abc --out {ws}/new.pt",
    "train --weight-decay inf --n 300 --epochs 1 --out {ws}/new.pt",
    "train --weight-decay -1 --n 300 --epochs 1 --out {ws}/new.pt",
    "train --patience -1 --n 300 --epochs 1 --out {ws}/new.pt",
    "train --depth 0 --out {ws}/new.pt",
    "train --width -3 --out {ws}/new.pt",
    "train --device nope --n 300 --epochs 1 --out {ws}/new.pt",
    "train --device cuda:7 --n 300 --epochs 1 --out {ws}/new.pt",
    "train --model nope --n 300 --epochs 1 --out {ws}/new.pt",
    "train --snr 0 --n 300 --epochs 1 --out {ws}/new.pt",
    "train --range R=5,5 --n 300 --epochs 1 --out {ws}/new.pt",
    "train --protocol {ws}/bad.scheme --n 300 --epochs 1 --out {ws}/new.pt",
    "train --n 1 --epochs 1 --out {ws}/new.pt",
    "train --seed x --out {ws}/new.pt",
    # --- evaluate
    "evaluate {ws}/missing.pt",
    "evaluate {ws}/garbage.pt",
    "evaluate {ws}/empty.pt",
    "evaluate {ws}/plain.txt",
    "evaluate {ws}/empty_dir",
    "evaluate {ws}/model.pt --n 0",
    "evaluate {ws}/model.pt --snr -1 --n 50",
    "evaluate {ws}/model.pt --snr x --n 50",
    "evaluate {ws}/model.pt --device nope --n 50",
    "evaluate {ws}/model.pt --n 50 --csv {ws}/plain.txt",
    # --- phantom
    "phantom --out {ws}/ph --shape 8 8 2",
    "phantom --out {ws}/plain.txt --shape 8 8 2",
    "phantom --out '' --shape 8 8 2",
    "phantom --out {ws}/new_ph --snr 0 --shape 8 8 2",
    "phantom --out {ws}/new_ph --snr -2 --shape 8 8 2",
    "phantom --out {ws}/new_ph --shape 0 8 2",
    "phantom --out {ws}/new_ph --shape 8 8",
    "phantom --out {ws}/new_ph --protocol nope --shape 8 8 2",
    # --- predict
    "predict {ws}/model.pt {ws}/missing.nii.gz --out {ws}/out",
    "predict {ws}/model.pt {ws}/text.nii.gz --out {ws}/out",
    "predict {ws}/model.pt {ws}/truncated.nii.gz --out {ws}/out",
    "predict {ws}/model.pt {ws}/plain.txt --out {ws}/out",
    "predict {ws}/garbage.pt {ws}/ph/dwi.nii.gz --out {ws}/out",
    "predict {ws}/missing.pt {ws}/ph/dwi.nii.gz --out {ws}/out",
    "predict {ws}/model.pt {ws}/ph/dwi.nii.gz --out {ws}/maps",
    "predict {ws}/model.pt {ws}/ph/dwi.nii.gz --out {ws}/ph/truth",
    "predict {ws}/model.pt {ws}/ph/dwi.nii.gz --out {ws}/ph",
    "predict {ws}/model.pt {ws}/anat/dwi.nii.gz --out {ws}/anat",
    "predict {ws}/model.pt {ws}/ph/dwi.nii.gz --out {ws}/plain.txt",
    "predict {ws}/model.pt {ws}/ph/dwi.nii.gz --out ''",
    "predict {ws}/model.pt {ws}/ph/dwi.nii.gz --mask {ws}/text.nii.gz --out {ws}/out",
    "predict {ws}/model.pt {ws}/ph/dwi.nii.gz --mask {ws}/missing.nii.gz --out {ws}/out",
    "predict {ws}/model.pt {ws}/ph/dwi.nii.gz --mask {ws}/ph/dwi.nii.gz --out {ws}/out",
    "predict {ws}/model.pt {ws}/ph/dwi.nii.gz --protocol nope --out {ws}/out",
    "predict {ws}/model.pt {ws}/ph/dwi.nii.gz --protocol {ws}/short.bval --out {ws}/out",
    "predict {ws}/model.pt {ws}/ph/dwi.nii.gz --protocol {ws}/bad.scheme --out {ws}/out",
    "predict {ws}/model.pt {ws}/ph/dwi.nii.gz --device nope --out {ws}/out",
    "predict {ws}/model.pt {ws}/ph/mask.nii.gz --out {ws}/out",
    # --- fit
    "fit {ws}/ph/dwi.nii.gz --model nope --out {ws}/out",
    "fit {ws}/missing.nii.gz --out {ws}/out",
    "fit {ws}/text.nii.gz --out {ws}/out",
    "fit {ws}/ph/dwi.nii.gz --out {ws}/maps",
    "fit {ws}/ph/dwi.nii.gz --out {ws}/ph/truth",
    "fit {ws}/ph/dwi.nii.gz --starts 0 --out {ws}/out",
    "fit {ws}/ph/dwi.nii.gz --device nope --out {ws}/out",
    "fit {ws}/ph/dwi.nii.gz --init {ws}/garbage.pt --out {ws}/out",
    "fit {ws}/ph/dwi.nii.gz --mask {ws}/truncated.nii.gz --out {ws}/out",
    "fit {ws}/ph/dwi.nii.gz --out ''",
    # --- compare
    "compare {ws}/missing {ws}/ph/truth",
    "compare {ws}/empty_dir {ws}/ph/truth",
    "compare {ws}/ph/truth {ws}/ph/truth --labels {ws}/text.nii.gz",
    "compare {ws}/ph/truth {ws}/ph/truth --labels {ws}/missing.nii.gz",
    "compare {ws}/ph/truth {ws}/ph/truth --csv {ws}/plain.txt",
    "compare {ws}/ph/truth {ws}/ph/truth --mask {ws}/text.nii.gz",
    "compare {ws}/plain.txt {ws}/ph/truth",
    # --- protocol-report
    "protocol-report --model nope",
    "protocol-report --snr 0",
    "protocol-report --protocol nope",
    "protocol-report --n-dictionary 1000000000000",
    "protocol-report --n-test 10 --n-dictionary 1000 --csv {ws}/plain.txt",
    "protocol-report --device nope --n-test 10 --n-dictionary 1000",
    # --- the parser itself
    "",
    "nope",
    "simulate",
    "predict",
    "train --nope",
]


def _one_clean_refusal(ws, case, capsys, monkeypatch) -> str:
    """Run ``case``; assert exit 2, one stderr line saying error (not bug), no file changed; return the line."""
    import shlex

    monkeypatch.chdir(ws)
    args = shlex.split(case.format(ws=ws))
    before = _tree_hash(ws)
    capsys.readouterr()
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, f"{case!r}: exit {rc}, stderr {err!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"{case!r}: expected one stderr line, got {lines!r}"
    assert "error" in lines[0] and "bug" not in lines[0], lines[0]
    assert _tree_hash(ws) == before, f"{case!r} changed files"
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_hostile_input_gives_one_line_exit_2_and_changes_nothing(ws, case, capsys, monkeypatch):
    _one_clean_refusal(ws, case, capsys, monkeypatch)


@pytest.mark.parametrize("case,says", NAMED, ids=[c for c, _ in NAMED])
def test_broken_acquisition_is_refused_in_one_line_naming_the_cause(ws, case, says, capsys, monkeypatch):
    assert says in _one_clean_refusal(ws, case, capsys, monkeypatch)


def test_there_are_at_least_100_cases():
    assert len(CASES) + len(NAMED) >= 100
