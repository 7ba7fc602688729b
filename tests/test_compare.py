"""compare_maps and roi_statistics against hand-computed numbers."""

import csv

import numpy as np
import pytest

from napari_rverdict.data.label_files import save_labels
from napari_rverdict.data.map_files import save_maps
from napari_rverdict.maps.compare import compare_maps, roi_statistics


def _pair():
    shape = (3, 2, 1)
    a = {"f_ic": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).reshape(shape),
         "T1": np.array([1000, 1100, 1200, 1300, 1400, 1500.0]).reshape(shape),
         "other": np.array([1, 2, 3, 4, 5, 6.0]).reshape(shape)}
    b = {"f_ic": np.array([0.2, 0.2, 0.1, 0.4, 0.5, 0.9]).reshape(shape),
         "T1": np.array([1000, 1000, 1200, 1500, 1400, 1500.0]).reshape(shape),
         "other": np.array([1, 2, 3, 4, 5, 10.0]).reshape(shape)}
    labels = np.array([1, 1, 2, 2, 0, 0]).reshape(shape)
    return a, b, labels


def test_compare_values_by_hand():
    a, b, labels = _pair()
    t = compare_maps(a, b, labels=labels, model="rverdict", label_names={1: "lesion", 2: "normal"})
    assert t.maps == ["f_ic", "T1", "other"] and t.regions == ["all", "lesion", "normal"]
    r = t.get("f_ic")
    # diffs -0.1, 0, 0.2, 0, 0, -0.3 over all 6 voxels (no mask: every voxel is non-zero in both)
    assert r["n"] == 6
    assert r["mse"] == pytest.approx((0.01 + 0.04 + 0.09) / 6)
    assert r["mape"] == pytest.approx((0.1 + 0.2 + 0.3) / 6 / 1.0)  # fractions: range 0–1
    r = t.get("T1", "lesion")  # diffs 0, 100
    assert r["n"] == 2 and r["mse"] == pytest.approx(5000.0)
    assert r["mape"] == pytest.approx(50.0 / (4000 - 10)) and r["range_source"] == "model" and r["unit"] == "ms"
    r = t.get("other", "normal")  # unknown map: range of both sets' values in the region (3–4)
    assert r["n"] == 2 and r["mse"] == 0 and r["mape"] == 0 and r["range_source"] == "data"
    r = t.get("other")  # diffs 0,0,0,0,0,-4; range 1–10
    assert r["mape"] == pytest.approx(4 / 6 / 9)
    assert t.mean_mape() == pytest.approx(np.mean([t.get(m)["mape"] for m in t.maps]))
    text = t.format_table()
    assert "lesion" in text and "normal" in text and "mean MAPE" in text and "T1" in text


def test_compare_mask_default_and_shapes():
    a, b, labels = _pair()
    mask = np.zeros(labels.shape, bool)
    mask[0, 0, 0] = mask[2, 1, 0] = True
    r = compare_maps(a, b, mask=mask).get("f_ic")
    assert r["n"] == 2 and r["mse"] == pytest.approx((0.01 + 0.09) / 2)
    # default mask: voxels non-zero in both sets
    a2 = {k: v.copy() for k, v in a.items()}
    for v in a2.values():
        v[1, 1, 0] = 0
    assert compare_maps(a2, b).get("T1")["n"] == 5
    with pytest.raises(ValueError, match="share no map"):
        compare_maps({"x": a["T1"]}, {"y": b["T1"]})
    with pytest.raises(ValueError, match="differ in shape"):
        compare_maps(a, {"f_ic": np.zeros((2, 2, 2))})
    with pytest.raises(ValueError, match="labels have shape"):
        compare_maps(a, b, labels=np.zeros((2, 2, 2), int))


def test_compare_from_directories_and_csv(tmp_path):
    a, b, labels = _pair()
    save_maps(a, tmp_path / "a", np.eye(4), model="rverdict")
    save_maps(b, tmp_path / "b", np.eye(4), model="rverdict")
    t = compare_maps(tmp_path / "a", tmp_path / "b", model="rverdict")
    assert t.get("f_ic")["mse"] == pytest.approx((0.01 + 0.04 + 0.09) / 6, rel=1e-5)
    assert t.get("T1")["unit"] == "ms"
    path = t.to_csv(tmp_path / "c.csv")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 3 and rows[0]["map"] in ("f_ic", "T1", "other") and float(rows[0]["n"]) == 6
    # an existing CSV is refused and left as it was (this table's and the ROI table's); overwrite=True replaces it
    roi = roi_statistics(a, labels)
    for table in (t, roi):
        path.write_text("kept")
        with pytest.raises(ValueError, match=r"c\.csv exists; pass overwrite=True to replace it"):
            table.to_csv(path)
        assert path.read_text() == "kept"
        assert table.to_csv(path, overwrite=True).read_text().startswith(",".join(table.columns))


def test_roi_statistics_by_hand(tmp_path):
    a, _, labels = _pair()
    maps = dict(a)
    maps["f_ic_sd"] = np.full(labels.shape, 0.05)
    maps["f_ic_sd"][labels == 2] = 0.1
    t = roi_statistics(maps, labels, {1: "lesion"})
    assert [r["map"] for r in t.rows] == ["f_ic", "T1", "other"] * 2  # _sd maps are a column, not rows
    r = t.get("f_ic", "lesion")
    assert r["n"] == 2 and r["mean"] == pytest.approx(0.15) and r["sd"] == pytest.approx(0.05)
    assert r["median"] == pytest.approx(0.15) and r["mean_sd"] == pytest.approx(0.05)
    r = t.get("T1", 2)
    assert r["name"] == "label 2" and r["mean"] == pytest.approx(1250) and r["unit"] == "ms"
    assert r["mean_sd"] is None
    assert t.get("f_ic", 2)["mean_sd"] == pytest.approx(0.1)
    text = t.format_table()
    assert "mean sd" in text and "lesion" in text
    rows = list(csv.DictReader(open(t.to_csv(tmp_path / "r.csv"))))
    assert len(rows) == 6 and rows[0]["mean_sd"] == "0.05"
    # labels from a file; a mask restricts every label
    save_labels(labels, tmp_path / "lab.nii.gz", np.eye(4))
    mask = np.ones(labels.shape, bool)
    mask[0, 0, 0] = False
    r = roi_statistics(a, tmp_path / "lab.nii.gz", mask=mask).get("other", 1)
    assert r["n"] == 1 and r["mean"] == 2 and r["sd"] == 0
    with pytest.raises(ValueError, match="no non-zero label"):
        roi_statistics(a, np.zeros(labels.shape, int))


def test_nan_outside_and_left_out_voxels_are_not_values():
    """Issue 11: maps with NaN outside the mapped voxels: the default mask is the finite voxels, n counts them."""
    a = np.full((4, 4, 1), np.nan, np.float32)
    b = np.full((4, 4, 1), np.nan, np.float32)
    a[:2] = 0.6
    b[:2] = 0.5
    a[0, 0, 0] = np.nan  # left out in a only
    a[1, 1, 0] = 0.0  # a genuine 0 inside the mapped voxels still counts
    t = compare_maps({"f_ic": a}, {"f_ic": b}, model="rverdict")
    r = t.get("f_ic")
    assert r["n"] == 7
    assert r["mse"] == pytest.approx((6 * 0.01 + 0.25) / 7, rel=1e-5)
    mask = np.ones((4, 4, 1), bool)
    assert compare_maps({"f_ic": a}, {"f_ic": b}, mask=mask, model="rverdict").get("f_ic")["n"] == 7
    lab = np.zeros((4, 4, 1), int)
    lab[:2] = 1
    lab[2:] = 1  # the label covers unmapped (NaN) voxels too
    row = roi_statistics({"f_ic": a}, lab).get("f_ic", 1)
    assert row["n"] == 7 and row["mean"] == pytest.approx((6 * 0.6) / 7, rel=1e-5)
