"""Every script of benchmarks/ answers --help: its usage, not a traceback (argparse formats
help strings with %, so a literal % in one breaks --help only)."""
import runpy
import sys
from pathlib import Path

import pytest
import torch

from .benchmark_modules import BENCHMARKS, load

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


BAD_ARGUMENTS = [   # (script, arguments, what the error names)
    ("step_speed.py", ["--fractions", "1.5"], "--fractions"),
    ("step_speed.py", ["--fractions", "abc"], "--fractions"),
    ("step_speed.py", ["--rounds", "0"], "--rounds"),
    ("step_speed.py", ["--grid", "0"], "--grid"),
    ("profile_step.py", ["--fractions", "0"], "--fractions"),
    ("pipeline_speed.py", ["--runs", "0"], "--runs"),
    ("thresholds.py", ["--rules", "fixd"], "--rules"),
    ("coverage.py", ["--options", '{"static_shape": true}'], "static_shape"),
    ("quality_speed.py", ["--methods", "nothing*", "--seeds", "1", "--steps", "2"], "matches no method"),
]
if not torch.cuda.is_available():
    BAD_ARGUMENTS.append(("step_speed.py", ["--device", "cuda"], "no CUDA device"))


@pytest.mark.parametrize("script,arguments,named", BAD_ARGUMENTS)
def test_bad_arguments_are_usage_errors(script, arguments, named, monkeypatch, capsys):
    """A value the script cannot use stops it at once with argparse's usage error naming the
    argument, before any measurement (not a traceback after minutes of work). cache-dit is
    made unimportable: an optional dependency that --methods leaves out must not be needed."""
    monkeypatch.setitem(sys.modules, "cache_dit", None)
    monkeypatch.setattr(sys, "argv", [script, *arguments])
    monkeypatch.syspath_prepend(BENCHMARKS)
    config = torch._dynamo.config
    # quality_speed raises dynamo's recompile limits for its process: restored on exit
    # (monkeypatch would delete, and so hide, these config entries at teardown)
    with pytest.raises(SystemExit) as done, config.patch(recompile_limit=config.recompile_limit,
                                                         accumulated_recompile_limit=config.accumulated_recompile_limit):
        runpy.run_path(str(Path(BENCHMARKS) / script), run_name="__main__")
    assert done.value.code == 2
    assert named in capsys.readouterr().err


def test_sampled_index_is_a_long_set_of_at_least_one_position():
    common = load("common")
    for n, fraction in ((64, 0.001), (64, 0.1), (64, 1.0), (7, 0.5)):
        index = common.sampled_index(n, fraction)
        assert index.dtype == torch.long
        assert 1 <= index.numel() == max(1, round(fraction * n)) <= n
        assert index.tolist() == sorted(set(index.tolist())) and 0 <= index.min() and index.max() < n
