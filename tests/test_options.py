"""Backend options: every mistake a user can make through `mode=` / `options=` raises an
error naming the option and what it must be (parse_options), and the one end-to-end path
through torch.compile shows it at the first call."""
import os
import pathlib

import pytest
import torch
import torch.fx as fx

import jano_compile
from jano_compile.dump import DumpDirError, write_dump
from jano_compile.options import parse_options
from jano_compile.report import GraphReport

from .pipelines import flux_pipeline
from .toy import ToyDiT


@pytest.fixture(autouse=True)
def no_dump_env(monkeypatch):
    """No JANO_DUMP_DIR from the caller's shell leaks into these tests."""
    monkeypatch.delenv("JANO_DUMP_DIR", raising=False)


# ---------------------------------------------------------------- options itself, mode
@pytest.mark.parametrize("options", [["lowering", "eager"], "lowering=eager", 3])
def test_options_must_be_a_mapping(options):
    with pytest.raises(TypeError, match=r"`options` must be a dict.*got "):
        parse_options(None, options)


def test_none_and_empty_options_are_the_defaults():
    for options in (None, {}):
        opts = parse_options(None, options)
        assert opts.lowering == "inductor" and opts.dump_dir is None
        assert opts.inductor == {} and opts.schedule == {}


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown torch.compile mode 'turbo'.*max-autotune-no-cudagraphs"):
        parse_options("turbo", {})


def test_torch_compile_itself_refuses_mode_with_options():
    """So the backend gets one or the other; parse_options merging both (mode first, the
    explicit settings win) only matters for direct calls, as in torch's Inductor wrapper."""
    with pytest.raises(RuntimeError, match="Either mode or options"):
        torch.compile(ToyDiT(), backend="jano", mode="max-autotune", options={"lowering": "eager"})
    patches = parse_options("max-autotune", {"max_autotune": False}).inductor_patches()
    assert patches["max_autotune"] is False and patches["coordinate_descent_tuning"] is True



def test_mode_among_the_options():
    """What torch.compile refuses as two arguments goes as one option; told twice, it must agree."""
    opts = parse_options(None, {"mode": "reduce-overhead", "lowering": "eager"})
    assert opts.mode == "reduce-overhead" and opts.inductor_patches()["triton.cudagraphs"] is True
    assert parse_options("reduce-overhead", {"mode": "reduce-overhead"}).mode == "reduce-overhead"
    with pytest.raises(ValueError, match="disagree"):
        parse_options("max-autotune", {"mode": "reduce-overhead"})
    with pytest.raises(ValueError, match="unknown torch.compile mode 'fast'"):
        parse_options(None, {"mode": "fast"})


@pytest.mark.parametrize("key", ["static_shapes", "cuda_graphs"])
def test_runtime_switches_take_booleans(key):
    assert getattr(parse_options(None, {key: True}), key) is True
    for value in ("yes", 1, 0):     # 1 == True, but not a switch
        with pytest.raises(TypeError, match=f"'{key}' must be True, False or None"):
            parse_options(None, {key: value})

@pytest.mark.parametrize("value", [0, -4, 2.5, True, "16"])
def test_static_buckets_takes_a_positive_int(value):
    assert parse_options(None, {"static_buckets": 64}).static_buckets == 64
    assert parse_options(None, {"static_buckets": None}).static_buckets is None     # the default
    with pytest.raises(ValueError, match="'static_buckets' must be a positive int"):
        parse_options(None, {"static_buckets": value})


# ---------------------------------------------------------------- Inductor settings
@pytest.mark.parametrize("key,value,match", [
    ("cpp.threads", "many", r"'cpp.threads'.*must be of type int, got 'many' of type str"),
    ("max_autotune", 1, r"'max_autotune'.*must be of type bool, got 1 of type int"),
    ("cpp.simdlen", "8", r"'cpp.simdlen'.*must be of type int \| None, got '8' of type str"),
    ("cpu_backend", "gcc", r"'cpu_backend'.*must be one of \('cpp', 'triton'.*got 'gcc'"),
])
def test_inductor_setting_of_wrong_type(key, value, match):
    with pytest.raises(TypeError, match=match):
        parse_options(None, {key: value})


@pytest.mark.parametrize("key,value", [
    ("cpp.threads", 4), ("max_autotune", True), ("cpp.simdlen", None), ("cpp.simdlen", 8),
    ("cpu_backend", "triton"),
    ("post_grad_custom_post_pass", None),       # Callable | list[...]: not checked, as torch
])
def test_inductor_setting_of_right_type_passes(key, value):
    assert parse_options(None, {key: value}).inductor == {key: value}


def test_inductor_setting_with_dashes_like_torch_compile():
    opts = parse_options(None, {"max-autotune": True, "lowering": "eager"})
    assert opts.inductor == {"max_autotune": True}
    with pytest.raises(TypeError, match=r"'max-autotune'.*bool"):
        parse_options(None, {"max-autotune": "yes"})


# ---------------------------------------------------------------- dump_dir
def test_dump_dir_missing_is_accepted_but_not_created(tmp_path):
    target = tmp_path / "dumps" / "run1"
    opts = parse_options(None, {"dump_dir": target})           # a Path is fine
    assert opts.dump_dir == str(target) and not (tmp_path / "dumps").exists()


def test_dump_dir_that_is_a_file(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    with pytest.raises(ValueError, match=r"jano option 'dump_dir'=.*notes.txt' is not a directory"
                                         r".*give a writable directory path.*leave dump_dir out"):
        parse_options(None, {"dump_dir": str(file)})


def test_save_dir_that_is_a_file_fails_when_enable_is_called(tmp_path):
    """save_dir is written at the first analysis, after the warm-up steps: checked up front."""
    file = tmp_path / "notes.txt"
    file.write_text("x")
    pipe, _ = flux_pipeline()
    with pytest.raises(ValueError, match=r"jano option 'save_dir'=.*notes.txt' is not a directory"
                                         r".*leave save_dir out"):
        jano_compile.enable(pipe, {"save_dir": file}, lowering="eager")
    assert getattr(pipe, "_jano_handle", None) is None


def test_dump_dir_under_a_file(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    with pytest.raises(ValueError, match=r"jano option 'dump_dir'=.*cannot be created, "
                                         r".*notes.txt' is a file, not a directory"):
        parse_options(None, {"dump_dir": str(file / "a" / "b")})
    assert list(tmp_path.iterdir()) == [file]


def test_dump_dir_without_write_permission(tmp_path, monkeypatch):
    """os.access stands in for a read-only place (tests may run as root, who may write
    anywhere a mode bit forbids)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path)
                        else real_access(p, mode))
    with pytest.raises(ValueError, match=r"'dump_dir'=.*cannot be created, no write permission in"):
        parse_options(None, {"dump_dir": str(tmp_path / "dumps")})
    with pytest.raises(ValueError, match=r"'dump_dir'=.*not writable"):
        parse_options(None, {"dump_dir": str(tmp_path)})


@pytest.mark.parametrize("value", [3, True, b"/tmp/dumps"])
def test_dump_dir_of_wrong_type(value):
    with pytest.raises(TypeError, match=r"jano option 'dump_dir' must be a directory path"):
        parse_options(None, {"dump_dir": value})


def test_dump_dir_from_env_names_the_env_var(tmp_path, monkeypatch):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    monkeypatch.setenv("JANO_DUMP_DIR", str(file))
    with pytest.raises(ValueError, match=r"environment variable JANO_DUMP_DIR=.*not a directory"
                                         r".*unset JANO_DUMP_DIR"):
        parse_options(None, {})
    # the option wins over the env var, so a bad env var is not read then
    assert parse_options(None, {"dump_dir": str(tmp_path)}).dump_dir == str(tmp_path)


def test_write_dump_failure_names_the_option(tmp_path):
    """The path can change after parse_options checked it: write_dump still names it."""
    dump_dir = tmp_path / "dumps"
    parse_options(None, {"dump_dir": str(dump_dir)})
    dump_dir.write_text("became a file")
    report = GraphReport(graph="graph_0", rewritten=False, reason="test")
    with pytest.raises(DumpDirError, match=r"jano option 'dump_dir' \(or env var JANO_DUMP_DIR\)"
                                           r".*give a writable directory"):
        write_dump(str(dump_dir), report, fx.symbolic_trace(torch.nn.ReLU()), None)


# ---------------------------------------------------------------- end to end
def test_bad_dump_dir_fails_at_first_call_naming_the_option(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    compiled = torch.compile(ToyDiT().eval(), backend="jano",
                             options={"lowering": "eager", "dump_dir": pathlib.Path(file)})
    with pytest.raises(Exception, match=r"jano option 'dump_dir'=.*is not a directory"):
        with torch.no_grad():
            compiled(torch.randn(1, 4, 8, 8))
