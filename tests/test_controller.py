"""The controller API and the backend options: documented errors, per-model state,
autograd and dynamic-shape fallbacks, registration of the backend name."""
import pickle
import subprocess
import sys
import warnings

import pytest
import torch

import jano_compile

from .toy import ToyDiT


def _compiled_toy(**options):
    model = ToyDiT().eval()
    compiled = torch.compile(model, backend="jano", options={"lowering": "eager", **options})
    return model, compiled


def test_set_active_before_first_full_step_raises():
    _, compiled = _compiled_toy()
    with pytest.raises(RuntimeError, match="before the first full step"):
        jano_compile.controller(compiled).set_active(torch.tensor([0]))


@pytest.mark.parametrize("index,error,match", [
    (torch.tensor([0.0, 1.0]), TypeError, "integer token positions"),
    ([0, 1], TypeError, "LongTensor"),
    (torch.tensor([[0, 1]]), ValueError, "1-D"),
    (torch.tensor([0, 16]), IndexError, r"\[0, 16\)"),
    (torch.tensor([-1]), IndexError, r"\[0, 16\)"),
    (torch.tensor([3, 3]), ValueError, "duplicate positions$"),
    (torch.tensor([0, 1, 1, 0]), ValueError, r"duplicate.*mask\.nonzero"),
    (torch.tensor([0, 1, 1, 0], dtype=torch.uint8), TypeError, r"torch\.uint8.*mask\.nonzero"),
    (torch.tensor([True, False]), TypeError, r"torch\.bool.*mask\.nonzero"),
    (torch.tensor([0], device="meta"), ValueError, "meta device"),
])
def test_set_active_rejects_bad_index(index, error, match):
    _, compiled = _compiled_toy()
    ctl = jano_compile.controller(compiled)
    with torch.no_grad():
        compiled(torch.randn(1, 4, 8, 8))
    with pytest.raises(error, match=match):
        ctl.set_active(index)


def test_unknown_option_fails_at_first_call_naming_the_key():
    _, compiled = _compiled_toy(bogus_key=1)
    with pytest.raises(Exception, match="unknown jano option 'bogus_key'.*lowering"):
        with torch.no_grad():
            compiled(torch.randn(1, 4, 8, 8))


def test_bad_lowering_value():
    _, compiled = _compiled_toy(lowering="fast")
    with pytest.raises(Exception, match="'lowering' must be one of"):
        with torch.no_grad():
            compiled(torch.randn(1, 4, 8, 8))


def test_a_controller_refuses_pickling_and_names_what_to_pickle():
    _, compiled = _compiled_toy()
    ctl = jano_compile.controller(compiled)
    with torch.no_grad():
        compiled(torch.randn(1, 4, 8, 8))
    with pytest.raises(TypeError, match=r"cannot be pickled.*ctl\.stats\(\)"):
        pickle.dumps(ctl)
    assert pickle.loads(pickle.dumps(ctl.stats())) == ctl.stats()


def test_controller_rejects_non_modules():
    with pytest.raises(TypeError, match="nn.Module"):
        jano_compile.controller(lambda x: x)


def test_refresh_and_active_set_semantics():
    model, compiled = _compiled_toy()
    ctl = jano_compile.controller(compiled)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        compiled(x)
        ctl.set_active(torch.tensor([2, 5]))
        compiled(x)
        ctl.refresh()
        compiled(x)             # full
        compiled(x)             # back to the active set
    stats = ctl.stats()
    assert stats["calls"] == 4 and stats["full_calls"] == 2
    assert stats["active_fraction"] == pytest.approx(2 / 16)
    assert stats["compiles"] == 1 and stats["graphs"] == 1
    assert stats["cache_bytes"] > 0
    assert stats["rewritten"] is True and stats["fallback_reason"] is None


def test_two_models_of_one_class_share_graph_not_state():
    a, b = ToyDiT().eval(), ToyDiT().eval()
    fa = torch.compile(a, backend="jano", options={"lowering": "eager"})
    fb = torch.compile(b, backend="jano", options={"lowering": "eager"})
    x, y = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    ca, cb = jano_compile.controller(fa), jano_compile.controller(fb)
    assert ca is not cb and jano_compile.controller(a) is ca
    with torch.no_grad():
        fa(x)
        fb(y)
        ca.set_active(torch.tensor([], dtype=torch.long))   # a: nothing recomputed
        out_b = fb(x)                                         # b: still full steps
        torch.testing.assert_close(out_b[0], b(x)[0], atol=1e-5, rtol=1e-5)
        out_a = fa(y)                                         # a keeps its cached output of x
        torch.testing.assert_close(out_a[0], a(x)[0], atol=1e-5, rtol=1e-5)
    assert cb.stats()["full_calls"] == 2 and ca.stats()["full_calls"] == 1


def test_autograd_is_not_rewritten():
    model = ToyDiT()
    compiled = torch.compile(model, backend="jano", options={"lowering": "eager"})
    x = torch.randn(1, 4, 8, 8)
    out = compiled(x)[0]
    out.sum().backward()
    assert model.out.weight.grad is not None
    stats = jano_compile.controller(compiled).stats()
    assert not stats["rewritten"] and "autograd" in stats["fallback_reason"]


def test_second_resolution_with_dynamic_shapes_falls_back_cleanly():
    model = ToyDiT().eval()
    compiled = torch.compile(model, backend="jano", options={"lowering": "eager"})
    with torch.no_grad():
        compiled(torch.randn(1, 4, 8, 8))
        x = torch.randn(1, 4, 12, 12)
        with pytest.warns(UserWarning, match="dynamic=False"):
            out = compiled(x)[0]
        torch.testing.assert_close(out, model(x)[0])
    assert "symbolic shapes" in jano_compile.controller(compiled).stats()["fallback_reason"]


def test_after_dynamic_shapes_take_over_set_active_says_those_calls_compute_all_tokens():
    """dynamic=None: after a second resolution dynamo runs every shape, the first included,
    through its symbolic graph, which jano cannot rewrite. set_active() then says so (once)
    instead of silently doing nothing, and the calls stay equal to the eager model."""
    model = ToyDiT().eval()
    compiled = torch.compile(model, backend="jano", options={"lowering": "eager"})
    ctl = jano_compile.controller(compiled)
    first = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        compiled(first)
        ctl.set_active(torch.arange(3))                   # the static graph: no warning
        with pytest.warns(UserWarning, match="dynamic=False"):
            compiled(torch.randn(1, 4, 12, 12))
        compiled(first)                                   # the first shape, now the symbolic graph
        with pytest.warns(UserWarning, match="the last call .*symbolic shapes.*compute all tokens, whatever set_active"):
            ctl.set_active(torch.arange(3))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ctl.set_active(torch.arange(3))               # once per reason
            torch.testing.assert_close(compiled(first)[0], model(first)[0])
    assert ctl.last_call.full


def test_refresh_after_a_call_that_ran_unrewritten_still_refreshes():
    """A grad-enabled call runs a graph jano does not rewrite; refresh() after it warns that
    such calls compute all tokens, and still makes the next call of the rewritten graph (no
    grad, new inputs) a full step equal to the eager model, not a partial step on the old
    inputs' caches."""
    model = ToyDiT().eval()
    compiled = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
    ctl = jano_compile.controller(compiled)
    first, later = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        compiled(first)
        ctl.set_active(torch.arange(3))
        compiled(first)
    compiled(first)                                        # autograd recording: not rewritten
    with pytest.warns(UserWarning, match="the last call .*autograd.*whatever refresh"):
        ctl.refresh()
    with torch.no_grad():
        out = compiled(later)[0]
        assert ctl.last_call.full
        torch.testing.assert_close(out, model(later)[0])


def test_second_resolution_with_static_shapes_is_rewritten():
    model = ToyDiT().eval()
    compiled = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
    ctl = jano_compile.controller(compiled)
    with torch.no_grad():
        compiled(torch.randn(1, 4, 8, 8))
        x = torch.randn(1, 4, 12, 12)
        full = compiled(x)[0]
        ctl.set_active(torch.arange(0, 36, 2))
        torch.testing.assert_close(compiled(x)[0], full, atol=1e-5, rtol=1e-5)
    stats = ctl.stats()
    assert stats["rewritten"] and stats["graphs"] == 2


@pytest.mark.parametrize("order", ["import-first", "lookup-first"])
def test_backend_name_registers_once_through_import_and_entry_point(order):
    steps = {
        "import-first": "import jano_compile; from torch._dynamo.backends.registry import lookup_backend; "
                        "fn = lookup_backend('jano'); import jano_compile.backend as b; assert fn is b.jano_backend",
        "lookup-first": "from torch._dynamo.backends.registry import lookup_backend; fn = lookup_backend('jano'); "
                        "import jano_compile, importlib; jano_compile.register(); assert 'jano' in "
                        "__import__('torch')._dynamo.list_backends()",
    }
    code = "import torch; " + steps[order]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_mode_and_inductor_settings_pass_through():
    from jano_compile.options import parse_options
    opts = parse_options("max-autotune", {"lowering": "inductor", "max_autotune_gemm": False,
                                          "warmup_steps": 8})
    patches = opts.inductor_patches()
    assert patches["max_autotune"] is True          # from the mode
    assert patches["max_autotune_gemm"] is False    # the explicit setting wins
    assert dict(opts.schedule) == {"warmup_steps": 8}
    with pytest.raises(ValueError, match="unknown torch.compile mode"):
        parse_options("turbo", {})
