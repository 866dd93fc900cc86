"""forecast_kv: the keys and values of tokens a step does not compute are extrapolated over
their own last two computation times (passes/kv_forecast.py), checked against the eager
model with its attention inputs recorded and replaced in the test."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import jano_compile
from jano_compile.passes.kv_forecast import extrapolate_rows
from jano_compile.passes.signature import Role

from .models import FAMILIES, flux
from .oracle import TOLERANCE, check_oracle

times = st.one_of(st.just(math.nan), st.floats(-4, 4, allow_nan=False))


@settings(max_examples=80, deadline=None)
@given(t0=st.lists(times, min_size=3, max_size=3), t1=st.lists(times, min_size=3, max_size=3),
       now=st.floats(-4, 8, allow_nan=False), dim=st.sampled_from([0, 1, 2]))
def test_rows_are_extrapolated_from_their_own_two_times(t0, t1, now, dim):
    torch.manual_seed(0)
    shape = [2, 2, 2]
    shape[dim] = 3
    cache, prev = torch.randn(shape), torch.randn(shape)
    out = extrapolate_rows(cache, prev, torch.tensor(t0), torch.tensor(t1), torch.tensor(now), dim)
    assert torch.isfinite(out).all()
    for r in range(3):
        c, p = cache.select(dim, r), prev.select(dim, r)
        if math.isnan(t0[r]) or math.isnan(t1[r]) or t0[r] == t1[r]:
            expected = c                                    # held
        else:
            expected = c + (c - p) * ((now - t0[r]) / (t0[r] - t1[r]))
        torch.testing.assert_close(out.select(dim, r), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_oracle_holds_with_forecast_kv(family):
    """Caches filled at x, partial steps at the same x: forecasting K/V changes nothing (a
    constant extrapolates to itself), for every family's layout of keys."""
    size = dict(h=4, w=4)
    subsets = [[], [0, 3], lambda n: list(range(0, n, 3)), lambda n: list(range(n))]
    ctl, _ = check_oracle(family, 2, torch.float32, subsets, options={"forecast_kv": True}, **size)
    store = ctl.store
    (graph_key,) = {key for key, _ in store._states}
    caches = store.tensors_of(graph_key, Role.K_CACHE) + store.tensors_of(graph_key, Role.V_CACHE)
    previous = store.tensors_of(graph_key, Role.KV_PREV)
    assert sorted(t.shape for t in previous) == sorted(t.shape for t in caches)
    assert ctl.stats()["forecast_bytes"] >= sum(t.numel() * t.element_size() for t in previous)


def _recording_sdpa(calls: list, replace=None):
    """F.scaled_dot_product_attention that records (key, value) per call; `replace(i, k, v)`
    may return the key and value the call uses instead."""
    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, *args, **kwargs):
        if replace is not None:
            key, value = replace(len(calls), key, value)
        calls.append((key.clone(), value.clone()))
        return original(query, key, value, *args, **kwargs)
    return sdpa


@pytest.mark.parametrize("lowering", ["eager", "inductor"])
def test_a_partial_step_reads_extrapolated_keys_and_values(lowering, monkeypatch):
    """Full steps at x0 (time 0) and x1 (time 1), then the tokens S at x2 (time 2). The
    reference: the eager model at x2 with every layer's keys and values of the other tokens
    replaced by 2 K(x1) - K(x0) (recorded from eager runs). Its outputs at S equal jano's;
    the other tokens' outputs are 2 y1 - y0 (the output forecast). Through Inductor too
    (one compile)."""
    text = 5
    model, kwargs, n = flux(b=1, h=4, w=4, text=text, layers=2, single_layers=2)
    model.eval()
    xs = [kwargs["hidden_states"] * s for s in (1.0, 1.3, 1.7)]
    active = torch.tensor([1, 4, 6, 11, 15])
    skipped = torch.tensor(sorted(set(range(n)) - set(active.tolist()))) + text     # rows: text first
    with torch.no_grad():
        recorded, ys = [], []
        for x in xs[:2]:
            calls = []
            monkeypatch.setattr(F, "scaled_dot_product_attention", _recording_sdpa(calls))
            ys.append(model(**{**kwargs, "hidden_states": x}, return_dict=False)[0])
            recorded.append(calls)

        def forecast_rows(i, k, v):
            (k0, v0), (k1, v1) = recorded[0][i], recorded[1][i]
            k, v = k.clone(), v.clone()
            k[:, :, skipped] = 2 * k1[:, :, skipped] - k0[:, :, skipped]
            v[:, :, skipped] = 2 * v1[:, :, skipped] - v0[:, :, skipped]
            return k, v
        monkeypatch.setattr(F, "scaled_dot_product_attention", _recording_sdpa([], forecast_rows))
        reference = model(**{**kwargs, "hidden_states": xs[2]}, return_dict=False)[0]
        monkeypatch.undo()
    out = _partial_after_two_full_steps(model, kwargs, xs, active, {"lowering": lowering, "forecast_kv": True})
    torch.testing.assert_close(out[:, active], reference[:, active], **TOLERANCE[torch.float32])
    others = skipped - text
    torch.testing.assert_close(out[:, others], (2 * ys[1] - ys[0])[:, others], **TOLERANCE[torch.float32])
    # and the held keys would give something else: the test can tell the two apart
    if lowering == "eager":
        held = _partial_after_two_full_steps(model, kwargs, xs, active, {"lowering": "eager"})
        assert not torch.allclose(out[:, active], held[:, active], atol=1e-3)


def _partial_after_two_full_steps(model, kwargs, xs, active, options):
    """jano's output at xs[2] computing only `active`, after full steps at xs[0] and xs[1]."""
    with torch.no_grad():
        f = torch.compile(model, backend="jano", options=options)
        ctl = jano_compile.controller(f)
        for x in xs[:2]:
            ctl.refresh()
            f(**{**kwargs, "hidden_states": x}, return_dict=False)
        ctl.set_active(active)
        out = f(**{**kwargs, "hidden_states": xs[2]}, return_dict=False)[0]
    torch._dynamo.reset()
    return out


def test_the_full_step_variant_keeps_the_kv_history(monkeypatch):
    """Static shapes: full steps through the full-step variant, then a partial step: equal
    to the same calls run through the rewritten graph alone (no full-step variant built)."""
    import jano_compile.rewrite as rewrite
    model, kwargs, n = flux(b=1, h=4, w=4, layers=1, single_layers=1)
    model.eval()
    xs = [kwargs["hidden_states"] * s for s in (1.0, 1.3, 1.7)]
    active = torch.tensor([0, 5, 9])
    outs = []
    for use_variants in (True, False):
        if not use_variants:
            monkeypatch.setattr(rewrite, "dense_variant", lambda gm: None)
        with torch.no_grad():
            f = torch.compile(copy.deepcopy(model), backend="jano",     # a controller of its own
                              options={"lowering": "eager", "forecast_kv": True, "static_shapes": True})
            ctl = jano_compile.controller(f)
            for x in xs[:2]:
                ctl.refresh()
                f(**{**kwargs, "hidden_states": x}, return_dict=False)
            runner = next(iter(ctl._graphs.values())).runner
            assert (runner.full is not None) == use_variants
            ctl.set_active(active)
            outs.append(f(**{**kwargs, "hidden_states": xs[2]}, return_dict=False)[0])
        torch._dynamo.reset()
    torch.testing.assert_close(outs[0], outs[1], **TOLERANCE[torch.float32])


def test_forecast_kv_needs_the_forecast():
    with pytest.raises(ValueError, match="forecast_kv.*reuse=\"forecast\""):
        jano_compile.JanoConfig(forecast_kv=True, reuse="hold")
