"""The command line prints paceline's own warnings as one line for its user."""

import io
import warnings
from pathlib import Path

import paceline.runners.dask_runner as dask_runner_module
from paceline.cli import main, show_warning


def test_a_warning_of_paceline_is_one_line_naming_paceline():
    out = io.StringIO()
    show_warning(
        RuntimeWarning("81 % of the cluster's slots came back late"),
        RuntimeWarning,
        str(Path(dask_runner_module.__file__)),
        412,
        out,
    )
    assert out.getvalue() == "paceline: warning: 81 % of the cluster's slots came back late\n"


def test_another_packages_warning_keeps_pythons_format():
    out = io.StringIO()
    show_warning(DeprecationWarning("old API"), DeprecationWarning, "/site/other/mod.py", 7, out)
    assert out.getvalue().startswith("/site/other/mod.py:7: DeprecationWarning: old API")


def test_main_shows_them_so_while_it_runs_and_restores_pythons_after(capsys):
    before = warnings.showwarning
    assert main(["report", "--help"]) == 0
    assert warnings.showwarning is before
