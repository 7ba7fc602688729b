"""`rverdict` failure lines: bad input (our InputError, OSError) → one `error:` line and exit 2; anything else is a bug
→ one `bug:` line and exit 1; `--debug` re-raises; `python -m napari_rverdict` goes through the same `main`."""


import pytest

import napari_rverdict.cli.report as report_cmd
from napari_rverdict.cli import main
from napari_rverdict.errors import InputError


def _stderr_lines(capsys):
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_bad_input_is_one_error_line_exit_2(capsys):
    assert main(["protocol-report", "--snr", "abc"]) == 2
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("rverdict protocol-report: error: --snr expects a positive number")
    assert lines[0].endswith("got 'abc'")


def test_os_error_is_bad_input(monkeypatch, capsys):
    def fails(args):
        raise FileNotFoundError(2, "No such file or directory", "nowhere.nii.gz")

    monkeypatch.setattr(report_cmd, "cmd_protocol_report", fails)
    assert main(["protocol-report"]) == 2
    (line,) = _stderr_lines(capsys)
    assert line.startswith("rverdict protocol-report: error: ") and "nowhere.nii.gz" in line


def test_input_error_from_the_library_is_bad_input(monkeypatch, capsys):
    def fails(args):
        raise InputError("the mask is\n empty")

    monkeypatch.setattr(report_cmd, "cmd_protocol_report", fails)
    assert main(["protocol-report"]) == 2
    assert _stderr_lines(capsys) == ["rverdict protocol-report: error: the mask is empty"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("k"), ValueError("plain value error"),
                                 ZeroDivisionError("division by zero")])
def test_a_bug_is_one_bug_line_exit_1(monkeypatch, capsys, exc):
    def fails(args):
        raise exc

    monkeypatch.setattr(report_cmd, "cmd_protocol_report", fails)
    assert main(["protocol-report"]) == 1
    (line,) = _stderr_lines(capsys)
    assert line.startswith(f"rverdict protocol-report: bug: {type(exc).__name__}: ")
    assert line.endswith("(run with --debug for the traceback)")


def test_debug_reraises(monkeypatch):
    def fails(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(report_cmd, "cmd_protocol_report", fails)
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "protocol-report"])
    monkeypatch.undo()
    with pytest.raises(InputError):
        main(["--debug", "protocol-report", "--snr", "abc"])


def test_python_dash_m_exit_2_on_bad_option_value(fresh_python):
    r = fresh_python("-m", "napari_rverdict", "protocol-report", "--snr", "abc")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rverdict protocol-report: error: --snr expects a positive number")
    assert lines[0].endswith("got 'abc'")


def test_help_and_usage_errors_do_not_wait_for_torch(fresh_python):
    """The parser (every command's options) and ``import napari_rverdict`` import neither torch nor SciPy: ``--help``
    and a usage error answer at once; the package's names still resolve on first use."""
    code = ("import sys, napari_rverdict\n"
            "from napari_rverdict.cli.main import build_parser\n"
            "build_parser()\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy', 'nibabel', 'dask'})\n"
            "assert not heavy, heavy\n"
            "from napari_rverdict import Protocol, simulate\n"
            "from napari_rverdict.physics import get_model\n"
            "assert len(Protocol.innovate()) == 10 and callable(simulate) and get_model('verdict').name == 'verdict'\n"
            "assert 'torch' in sys.modules\n")
    r = fresh_python("-c", code)
    assert r.returncode == 0, r.stderr
    r = fresh_python("-m", "napari_rverdict", "train", "--epochs", "0")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("value", ["nan", "-3", "inf", "x"])
def test_tr_nan_or_not_positive_is_bad_input(value, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error: one line, exit 2
        main(["phantom", "--out", str(tmp_path / "ph"), "--shape", "8", "8", "1", "--tr", value])
    assert exit_.value.code == 2
    (line,) = _stderr_lines(capsys)
    assert line.startswith("rverdict phantom: error: argument --tr: expected a TR in ms") and f"'{value}'" in line
    assert not (tmp_path / "ph").exists()


def test_a_refused_output_answers_without_loading_torch(tmp_path, fresh_python):
    """An existing output (or a folder holding other files) is refused before the commands' heavy imports, and the
    CLI sets torch's threads only once torch is imported: the refusal is one line at once."""
    for name in ("m.pt", "s.npz", "t.csv"):
        (tmp_path / name).write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    t, full = str(tmp_path), str(tmp_path / "full")
    commands = [["train", "--out", f"{t}/m.pt"], ["simulate", "--out", f"{t}/s.npz"],
                ["evaluate", f"{t}/m.pt", "--csv", f"{t}/t.csv"], ["protocol-report", "--csv", f"{t}/t.csv"],
                ["phantom", "--out", full], ["predict", f"{t}/m.pt", f"{t}/dwi.nii.gz", "--out", full],
                ["fit", f"{t}/dwi.nii.gz", "--out", full], ["compare", t, full, "--csv", f"{t}/t.csv"]]
    code = ("import sys\nfrom napari_rverdict.cli import main\n"
            f"rcs = [main(c) for c in {commands!r}]\n"
            "assert rcs == [2] * len(rcs), rcs\n"
            "assert 'torch' not in sys.modules\n")
    r = fresh_python("-c", code)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == len(commands) and all(" error: " in ln for ln in lines), r.stderr


def test_torch_threads_are_set_when_a_command_imports_torch(tmp_path, fresh_python):
    """The thread count main() chooses applies to the torch work of a command that imports torch itself."""
    code = ("import importlib\nm = importlib.import_module('napari_rverdict.cli.main')\n"
            "import napari_rverdict.cli.simulate as s\n"
            "m.torch_threads = lambda context: 2\n"
            "def cmd(args):\n    import torch\n    print(torch.get_num_threads())\n    return 0\n"
            "s.cmd_simulate = cmd\n"
            "assert m.main(['simulate', '--out', 'x.npz']) == 0\n"
            "import torch\nprint(torch.get_num_threads())\n")
    r = fresh_python("-c", code, env={"OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "1"]  # the command's count inside, torch's own restored after
