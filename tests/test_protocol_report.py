"""``rverdict protocol-report`` and posterior.protocol_report: √CRLB at typical tissue and the Bayes limit."""

import csv

import numpy as np
import pytest
from napari_rverdict.cli import main

from napari_rverdict.evaluate.crlb import crlb
from napari_rverdict.evaluate.report import protocol_report, typical_crlb, typical_parameters
from napari_rverdict.physics.models import get_model
from napari_rverdict.physics.protocol_files import load_protocol, write_scheme


@pytest.fixture(scope="module")
def report():
    # "peak": σ = the typical signal's brightest measurement / 35, so √CRLB is crlb(..., 35) itself
    return protocol_report("rverdict", "innovate", snr=35, n_test=60, n_dictionary=20_000, seed=3,
                           snr_reference="peak")


def test_to_csv_refuses_an_existing_file_unless_overwrite(report, tmp_path):
    from napari_rverdict.errors import InputError

    path = tmp_path / "r.csv"
    path.write_text("kept")
    with pytest.raises(InputError, match=r"r\.csv exists; pass overwrite=True to replace it"):
        report.to_csv(path)
    assert path.read_text() == "kept"
    rows = list(csv.DictReader(open(report.to_csv(path, overwrite=True))))
    assert [r["map"] for r in rows] == list(report.rows)


def test_crlb_is_the_evaluation_modules(report):
    model = get_model("rverdict")
    typical = typical_parameters(model)
    ref, cov = crlb(model, load_protocol("innovate"), {k: np.array([v]) for k, v in typical.items()}, 35.0,
                    return_covariance=True)
    for k in model.estimated_names:
        assert report.rows[k]["crlb"] == float(ref[k][0])
    # the dependent fraction by the delta method: var(1 − f_ic − f_ees) = sum of the fractions' covariance block
    i, j = model.estimated_names.index("f_ic"), model.estimated_names.index("f_ees")
    var = cov[0][np.ix_([i, j], [i, j])].sum()
    assert report.rows["f_vasc"]["crlb"] == pytest.approx(np.sqrt(var), rel=1e-9)
    # SNR scales √CRLB as 1/SNR (Gaussian Fisher information)
    c70 = typical_crlb(model, "innovate", 70.0, snr_reference="peak")
    for k in model.map_names:
        assert c70[k] == pytest.approx(report.rows[k]["crlb"] / 2, rel=1e-6)


def test_rows_and_bayes_limit(report):
    model = get_model("rverdict")
    assert list(report.rows) == list(model.map_names)
    for k, r in report.rows.items():
        assert r["bayes_rmse"] > 0 and r["prior_rmse"] > 0 and r["crlb"] > 0
        assert r["ratio"] == pytest.approx(r["bayes_rmse"] / r["prior_rmse"])
    # the acquisition informs T1 (TR varies) much more than the prior alone; fractions are partly supported
    assert report.rows["T1"]["ratio"] < 0.6 and report.rows["f_ic"]["ratio"] < 0.9
    assert report.rows["T1"]["typical"] == pytest.approx(2005.0)
    text = report.format_table()
    assert "√CRLB" in text and "Bayes RMSE" in text and "T2_vasc_ees" in text


def test_verdict_report():
    rep = protocol_report("verdict", "innovate", snr=35, n_test=20, n_dictionary=5000)
    assert list(rep.rows) == list(get_model("verdict").map_names)
    assert np.isfinite(rep.rows["f_ic"]["crlb"])


def test_cli_table_and_csv(tmp_path, capsys):
    out = tmp_path / "r.csv"
    rc = main(["protocol-report", "--model", "rverdict", "--protocol", "innovate", "--snr", "35", "--n-test", "20",
               "--n-dictionary", "5000", "--csv", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "f_ic" in text and "cellularity" in text and f"wrote {out}" in text
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [r["map"] for r in rows] == list(get_model("rverdict").map_names)
    ref = typical_crlb("rverdict", "innovate", 35.0)
    for r in rows:
        assert float(r["sqrt_crlb"]) == pytest.approx(ref[r["map"]], rel=1e-9)


def test_cli_scheme_file_needs_tr(tmp_path, capsys):
    p = load_protocol("innovate")
    path = tmp_path / "acq.scheme"
    write_scheme(p, path, write_tr=False)
    rc = main(["protocol-report", "--protocol", str(path), "--n-test", "10", "--n-dictionary", "2000"])
    assert rc == 2
    assert "TR" in capsys.readouterr().err
    rc = main(["protocol-report", "--protocol", str(path), "--tr", "3000", "--n-test", "10", "--n-dictionary", "2000"])
    assert rc == 0
    assert "acq.scheme" in capsys.readouterr().out


def test_cli_bad_input(capsys):
    assert main(["protocol-report", "--snr", "abc"]) == 2
    assert "--snr" in capsys.readouterr().err
    assert main(["protocol-report", "--snr", "-5", "--n-test", "10", "--n-dictionary", "100"]) == 2
    assert "--snr" in capsys.readouterr().err
    assert main(["protocol-report", "--snr", "15-60"]) == 2  # a range is for training, not for one report
    assert "one number" in capsys.readouterr().err
    assert main(["protocol-report", "--model", "dti"]) == 2
    assert "dti" in capsys.readouterr().err


def test_cli_refuses_a_huge_dictionary_and_an_existing_csv(tmp_path, capsys):
    from napari_rverdict.cli import main as cli

    assert cli(["protocol-report", "--n-dictionary", str(10**13)]) == 2
    assert "memory" in capsys.readouterr().err
    out = tmp_path / "r.csv"
    out.write_text("mine")
    assert cli(["protocol-report", "--n-dictionary", "5000", "--csv", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "mine"
