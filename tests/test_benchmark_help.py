"""Every script of benchmarks/ answers --help: its usage, not a traceback (argparse formats
help strings with %, so a literal % in one breaks --help only)."""
import runpy
import sys
from pathlib import Path

import pytest

from .benchmark_modules import BENCHMARKS

SCRIPTS = sorted(p.name for p in Path(BENCHMARKS).glob("*.py") if "__main__" in p.read_text())


def test_the_scripts_are_found():
    assert {"step_speed.py", "pipeline_speed.py", "coverage.py", "thresholds.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    monkeypatch.setenv("CACHE_DIT_LOG_LEVEL", "warning")    # quality_speed sets it at import: undone after
    monkeypatch.syspath_prepend(BENCHMARKS)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(Path(BENCHMARKS) / script), run_name="__main__")
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
