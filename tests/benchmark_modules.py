"""The scripts of benchmarks/ as modules, for tests of the helpers they report with."""
import importlib
import sys
from pathlib import Path

BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")


def load(name: str):
    """benchmarks/<name>.py, imported with benchmarks/ on the path (the scripts import their
    neighbours, as common)."""
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    return importlib.import_module(name)
