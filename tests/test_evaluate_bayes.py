"""``evaluate(..., bayes=N)`` and ``rverdict evaluate --bayes N``: the Bayes-limit RMSE column beside the RMSE."""

import numpy as np
import pytest
from napari_rverdict.cli import main

from napari_rverdict.data.synth import simulate
from napari_rverdict.evaluate.metrics import evaluate
from napari_rverdict.evaluate.posterior import bayes_limit
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import train


@pytest.fixture(scope="module")
def bundle():
    data = simulate("rverdict", n=800, snr=(20, 50), seed=3, ranges={"R": (1.0, 12.0)})
    return train(data, TrainConfig(epochs=2, seed=0, device="cpu")).bundle


def test_evaluate_with_bayes_limit(bundle, tmp_path):
    rep = evaluate(bundle, n=200, n_crlb=0, seed=4, bayes=4000, n_bayes_test=40)
    names = list(bundle.target_names) + ["f_vasc"]
    assert list(rep.rows) == names and rep.has_bayes
    assert rep.extra["bayes"] == {"n_dictionary": 4000, "n_test": 40}
    # the column is bayes_limit with the bundle's model, protocol, ranges, sampler and SNR (range), same seed
    ref = bayes_limit(bundle.model, bundle.protocol, bundle.snr, n_test=40, n_dictionary=4000, ranges=bundle.ranges,
                      fraction_sampler=bundle.fraction_sampler, seed=4)
    for k in names:
        assert rep.rows[k]["bayes"] == pytest.approx(ref[k], rel=1e-9)
        assert np.isfinite(rep.rows[k]["bayes"]) and rep.rows[k]["bayes"] > 0
    # the posterior mean beats guessing the middle of the range (R's range 1-12 µm is the bundle's, not the default)
    data = simulate("rverdict", bundle.protocol, n=40, snr=bundle.snr, ranges=bundle.ranges, seed=4 + 100_003)
    assert data.params["R"].max() <= 12.0
    for k in ("f_ic", "R"):
        lo, hi = bundle.ranges[k]
        assert rep.rows[k]["bayes"] < np.sqrt(np.mean((data.params[k] - 0.5 * (lo + hi)) ** 2))
    table = rep.format_table()
    assert "Bayes RMSE" in table and "4,000-entry prior dictionary" in table
    row = next(ln for ln in table.splitlines() if ln.startswith("R "))
    values = [float(x) for x in row.split()[-6:]]  # RMSE, Bayes RMSE, bias, MAPE, r, √CRLB
    assert values[0] == pytest.approx(rep.rows["R"]["rmse"], rel=1e-3)
    assert values[1] == pytest.approx(rep.rows["R"]["bayes"], rel=1e-3)
    header, first = rep.to_csv(tmp_path / "t.csv").read_text().splitlines()[:2]
    assert header.endswith(",bayes_limit_rmse")
    assert float(first.split(",")[-1]) == pytest.approx(rep.rows[names[0]]["bayes"])


def test_evaluate_without_bayes_has_no_column(bundle):
    rep = evaluate(bundle, n=50, n_crlb=0)
    assert not rep.has_bayes and all("bayes" not in r for r in rep.rows.values())
    assert "Bayes" not in rep.format_table()
    with pytest.raises(ValueError, match="bayes"):
        evaluate(bundle, n=50, n_crlb=0, bayes=-1)
    with pytest.raises(ValueError, match="n_bayes_test"):
        evaluate(bundle, n=50, n_crlb=0, bayes=100, n_bayes_test=1)


def test_cli_evaluate_bayes(bundle, tmp_path, capsys):
    path = bundle.save(tmp_path / "m.pt")
    rc = main(["evaluate", str(path), "--n", "100", "--n-crlb", "0", "--bayes", "3000", "--bayes-signals", "30"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Bayes RMSE" in out and "3,000-entry" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("f_ic "))
    assert np.isfinite(float(row.split()[2])) and float(row.split()[2]) > 0
    rc = main(["evaluate", str(path), "--n", "100", "--bayes", "-5"])
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "bayes" in err
