"""Forecast instead of hold: the extrapolation itself (against an independent Lagrange
reference), the history it keeps, and the compiled path: skipped steps run the tail, not
the model, and return the forecast in the model's own output layout."""
import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import jano_compile
from jano_compile.passes.forecast import forecast_output, write_shifted_history

from .models import flux, sd3, wan
from .test_adaptive import batched_cfg_loop, euler_loop

STEPS = 12


def lagrange(times: list[float], values: list[torch.Tensor], t: float) -> torch.Tensor:
    """The polynomial through (times[j], values[j]) evaluated at t (independent reference)."""
    out = torch.zeros_like(values[0], dtype=torch.float64)
    for j, (tj, vj) in enumerate(zip(times, values)):
        weight = math.prod((t - tm) / (tj - tm) for m, tm in enumerate(times) if m != j)
        out += weight * vj.double()
    return out


@given(order=st.integers(1, 2), gaps=st.lists(st.integers(1, 12), min_size=2, max_size=2),
       ahead=st.integers(0, 12), seed=st.integers(0, 2**16))
def test_forecast_equals_the_interpolating_polynomial(order, gaps, ahead, seed):
    """Per token, the forecast is the polynomial through that token's own slots, whatever
    the (mixed) gaps between its computations."""
    g = torch.Generator().manual_seed(seed)
    n = 5
    history = [torch.randn(2, n, 3, generator=g) for _ in range(order + 1)]
    last = torch.randint(0, 30, (n,), generator=g).float()
    times = [last]
    for j in range(order):
        times.append(times[-1] - gaps[j % len(gaps)] - torch.randint(0, 3, (n,), generator=g).float())
    t = float(last.max()) + ahead
    got = forecast_output(torch.tensor(t), history, times)
    for i in range(n):
        expected = lagrange([float(tj[i]) for tj in times], [h[:, i] for h in history], t)
        torch.testing.assert_close(got[:, i].double(), expected, atol=1e-3, rtol=1e-4)


def test_equal_or_missing_times_hold_the_last_output():
    h0, h1, h2 = torch.randn(1, 4, 2), torch.randn(1, 4, 2), torch.randn(1, 4, 2)
    nan = float("nan")
    t0 = torch.tensor([3.0, 3.0, 3.0, nan])
    t1 = torch.tensor([3.0, nan, 1.0, nan])       # equal, never computed, fine, never
    t2 = torch.tensor([1.0, nan, 1.0, nan])       # token 2: slots 1 and 2 share a time
    got = forecast_output(torch.tensor(5.0), [h0, h1, h2], [t0, t1, t2])
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[:, :2], h0[:, :2])                     # held
    torch.testing.assert_close(got[:, 3], h0[:, 3])
    linear = h0[:, 2] + (h0[:, 2] - h1[:, 2]) * (5.0 - 3.0) / (3.0 - 1.0)  # order 2 term dropped
    torch.testing.assert_close(got[:, 2], linear)
    one_slot = forecast_output(torch.tensor(5.0), [h0], [t0])             # order 0: hold
    torch.testing.assert_close(one_slot, h0)


def test_shift_history_moves_only_the_computed_tokens_in_place():
    graph = torch.fx.Graph()
    index, time, fresh, h0, h1, t0, t1 = (graph.placeholder(name) for name in
                                          ("index", "time", "fresh", "h0", "h1", "t0", "t1"))
    write_shifted_history(graph, index, time, fresh, [h0, h1], [t0, t1])
    graph.output(())
    shift = torch.fx.GraphModule(torch.nn.Module(), graph)
    h = [torch.zeros(1, 4, 2), torch.ones(1, 4, 2)]
    times = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 0.0, 0.0])]
    storages = [t.data_ptr() for t in h + times]
    shift(torch.tensor([1, 3]), torch.tensor(2.0), torch.full((1, 2, 2), 7.0, dtype=torch.bfloat16), *h, *times)
    assert [t.data_ptr() for t in h + times] == storages and h[0].dtype == torch.float32
    assert h[0][0, :, 0].tolist() == [0, 7, 0, 7] and h[1][0, :, 0].tolist() == [1, 0, 1, 0]
    assert times[0].tolist() == [1, 2, 1, 2] and times[1].tolist() == [0, 1, 0, 1]


SCHEDULE = dict(warmup_steps=3, cooldown_steps=2, static_interval=2, medium_interval=2,
                active_interval=2, num_inference_steps=STEPS, reuse="forecast")


def _compiled(model, lowering="eager", **options):
    return torch.compile(model, backend="jano", dynamic=False,
                         options={"lowering": lowering, **SCHEDULE, **options})


class CallCounter:
    """Stands in for a lowered callable, counting its calls."""

    def __init__(self, inner):
        self.inner, self.n = inner, 0

    def __call__(self, *args):
        self.n += 1
        return self.inner(*args)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _count_calls(ctl, graph_attr) -> CallCounter:
    """Count the calls of the (one) rewritten graph's `lowered` or `tail`."""
    (graph,) = ctl._graphs.values()
    counter = CallCounter(getattr(graph.runner, graph_attr))
    setattr(graph.runner, graph_attr, counter)
    return counter


@pytest.mark.parametrize("family", [flux, sd3, wan])
def test_skipped_steps_run_the_tail_and_return_the_forecast(family):
    """Uniform period 2: steps 3, 5, 7, 9 (after warm-up 0..2) are computed, 4, 6, 8 are not.
    A skipped step returns the linear extrapolation of the last two computed outputs over
    their steps, in the model's layout (SD3, Wan: after the unpatchify), and never calls the
    rewritten graph (Wan: its RoPE's writes into a tensor of its own are dropped with the
    blocks)."""
    model, kwargs, n = family(b=1, h=4, w=4)
    model.eval()
    f = _compiled(model)
    ctl = jano_compile.controller(f)
    outputs = []
    with torch.no_grad():
        for step in range(STEPS):
            if step == 1:
                main, tail = _count_calls(ctl, "lowered"), _count_calls(ctl, "tail")
            kw = {**kwargs, "timestep": torch.full((1,), 900.0 - 50 * step)}
            outputs.append(f(**kw, return_dict=False)[0])
    levels = ctl.stats()["levels"]
    skipped = [s for s, level in enumerate(levels) if level == "skip"]
    assert skipped == [4, 6, 8]
    # full steps run the graph (symbolic on a CPU), skipped steps the tail
    assert main.n == STEPS - 1 - len(skipped) and tail.n == len(skipped)
    for s in skipped:
        a, b = [c for c in range(s) if c not in skipped][-2:][::-1]    # the last two computed
        expected = outputs[a] + (outputs[a] - outputs[b]) * (s - a) / (a - b)
        torch.testing.assert_close(outputs[s], expected, atol=1e-5, rtol=1e-5)
    assert ctl.reports[0].skip_steps.startswith("a tail of")


def test_full_steps_run_the_full_variant_equal_to_the_rewritten_graph():
    """Static shapes, periods 4/2/1 after a warm-up of 3: the full steps 0 .. 3 run the
    full-step variant (all tokens, no gather, caches filled), never the rewritten graph, and
    the partial steps after them read its caches: results equal a run whose full steps run
    the rewritten graph."""
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    schedule = dict(static_interval=4, medium_interval=2, active_interval=1)
    timesteps = [0.9 - 0.05 * step for step in range(STEPS)]
    outputs = {}
    with torch.no_grad():
        for use_variant in (True, False):
            torch._dynamo.reset()
            f = _compiled(copy.deepcopy(model), static_shapes=True, **schedule)
            ctl = jano_compile.controller(f)
            outputs[use_variant] = [f(**{**kwargs, "timestep": torch.full((1,), timesteps[0])},
                                      return_dict=False)[0]]
            main, full = _count_calls(ctl, "lowered"), _count_calls(ctl, "full")
            if not use_variant:
                ctl._graphs[next(iter(ctl._graphs))].runner.full = None
            for step, t in enumerate(timesteps[1:], start=1):
                outputs[use_variant].append(f(**{**kwargs, "timestep": torch.full((1,), t)},
                                              return_dict=False)[0])
                if use_variant and step == 3:
                    assert (main.n, full.n) == (0, 3)
                if use_variant and step == 4:      # partial: its static graph
                    runner = ctl._graphs[next(iter(ctl._graphs))].runner
                    assert (main.n, full.n, len(runner.static)) == (0, 3, 1)
    assert ctl.stats()["levels"][:5] == ["warmup"] * 3 + ["refresh", "active"]
    for a, b in zip(outputs[True], outputs[False]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_every_token_computed_equals_the_plain_model_in_forecast_mode():
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    with torch.no_grad():
        plain = euler_loop(model, kwargs, steps=STEPS)
        f = _compiled(model, active_interval=1, static_interval=1, medium_interval=1)
        out = euler_loop(f, kwargs, steps=STEPS)
    stats = jano_compile.controller(f).stats()
    assert stats["compute_saved"] == 0.0 and "skip" not in stats["levels"]
    # order 1: two slots of [1, 16 tokens, 8 channels] fp32 outputs and [16] fp32 times,
    # and the [16] fp32 measured errors
    assert stats["forecast_bytes"] == 2 * (16 * 8 * 4 + 16 * 4) + 16 * 4 < stats["cache_bytes"]
    torch.testing.assert_close(out, plain, atol=1e-4, rtol=1e-4)


def test_split_cfg_branches_forecast_from_their_own_history():
    """Split CFG (two calls a step) equals batched CFG (one call with both rows): each
    branch's history holds its own outputs."""
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    uncond = torch.randn_like(kwargs["encoder_hidden_states"])
    with torch.no_grad():
        split = euler_loop(_compiled(model), kwargs, steps=STEPS, cfg_split=uncond)
        torch._dynamo.reset()
        f = _compiled(model)
        x = batched_cfg_loop(f, kwargs, uncond, steps=STEPS)
    assert "skip" in jano_compile.controller(f).stats()["levels"]
    torch.testing.assert_close(split, x, atol=1e-4, rtol=1e-4)


def test_a_new_generation_does_not_forecast_across():
    """The same generation twice in a row gives the same result, and a new generation
    starts its forecast history empty: after its first call (a full warm-up step) each
    token's history holds that one time, every older slot NaN ("never computed"), though
    the first run had filled them all. (With at least one warm-up step and a refresh
    before the first skipped step the outputs alone cannot show the reset: those full
    steps refill every slot an order-1 or order-2 forecast reads.)"""
    from jano_compile.passes.signature import Role

    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    f = _compiled(model)
    ctl = jano_compile.controller(f)

    def history_times():
        (key,) = [key for key, graph in ctl._graphs.items() if graph.runner is not None]
        return torch.stack(ctl.store.tensors_of(key, Role.HISTORY_TIME))     # [slots, N]

    with torch.no_grad():
        first = euler_loop(f, kwargs, steps=STEPS)
        assert not history_times().isnan().any()
        euler_loop(f, kwargs, steps=1)          # the first step of a new generation
        times = history_times()
        second = euler_loop(f, kwargs, steps=STEPS)
    slots_filled = (~times.isnan()).sum(dim=0)
    assert torch.equal(slots_filled, torch.ones_like(slots_filled)), times
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_forecast_compiled_with_inductor_once_for_every_step_kind():
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    schedule = dict(static_interval=4, medium_interval=2, active_interval=1, threshold_mode="quantile",
                    static_fraction=0.4, medium_fraction=0.3)
    with torch.no_grad():
        eager = euler_loop(_compiled(model, **schedule), kwargs, steps=STEPS)
        torch._dynamo.reset()
        f = _compiled(copy.deepcopy(model), lowering="inductor", **schedule)   # a controller of its own
        compiled = euler_loop(f, kwargs, steps=STEPS)
        stats = jano_compile.controller(f).stats()
        torch._dynamo.reset()
        skipping = _compiled(copy.deepcopy(model), lowering="inductor")   # period 2: the tail runs
        skipped = euler_loop(skipping, kwargs, steps=STEPS)
        skip_stats = jano_compile.controller(skipping).stats()
        torch._dynamo.reset()
        skipped_eager = euler_loop(_compiled(model), kwargs, steps=STEPS)
    assert {"refresh", "medium", "active"} <= set(stats["levels"])
    assert stats["compiles"] == 1     # on a CPU one symbolic graph for every step, full or partial
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    # full steps on the graph, skipped ones on the tail
    assert "skip" in skip_stats["levels"] and skip_stats["compiles"] == 2
    torch.testing.assert_close(skipped, skipped_eager, atol=1e-4, rtol=1e-4)


class SliceExit(torch.nn.Module):
    """The exit is a slice of a longer sequence ([history | image]): gather_scatter makes
    it contiguous before the scatter, a node dynamo recorded no value for."""

    def __init__(self, c=8, d=16):
        super().__init__()
        self.inp, self.qkv, self.out = torch.nn.Linear(c, d), torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, c)

    def forward(self, hidden_states, history):
        n = hidden_states.shape[1]
        x = torch.cat([self.inp(history), self.inp(hidden_states)], dim=1)
        q, k, v = (t.unflatten(-1, (2, -1)).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        x = x + torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return (self.out(x)[:, -n:],)


def test_forecast_rewrites_a_model_whose_exit_is_a_slice():
    model = SliceExit().eval()
    f = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
    x, history = torch.randn(1, 12, 8), torch.randn(1, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(f(x, history)[0], model(x, history)[0], atol=1e-5, rtol=1e-5)
    stats = jano_compile.controller(f).stats()
    assert stats["rewritten"], stats["fallback_reason"]


# classes whose skip tail drops writes into tensors of their own (RoPE tables; a tail at all, or
# a shorter one), beside two without such writes
TAILED = ["FluxTransformer2DModel", "SD3Transformer2DModel", "WanTransformer3DModel", "WanVACETransformer3DModel",
          "CogView4Transformer2DModel", "EasyAnimateTransformer3DModel", "GlmImageTransformer2DModel",
          "HeliosTransformer3DModel", "WanAnimateTransformer3DModel", "SanaVideoTransformer3DModel",
          "HunyuanImageTransformer2DModel", "HunyuanVideoTransformer3DModel", "Ideogram4Transformer2DModel",
          "PRXTransformer2DModel", "LTX2VideoTransformer3DModel"]


@pytest.mark.parametrize("name", TAILED)
def test_the_skip_tail_returns_what_the_graph_returns_on_no_token(name):
    """A skip step's tail (the blocks gone, with the writes into the model's own tensors
    that fed them) returns what the rewritten graph returns when no image token is active:
    the forecast, through what follows the exit; forecast and held outputs alike."""
    from jano_compile.passes.plan import PassConfig
    from jano_compile.rewrite import rewrite_graph
    from .test_token_rules import TINY
    torch.manual_seed(0)
    model, kwargs = TINY[name].build(1)
    for reuse in ("forecast", "hold"):
        results = []

        def backend(gm, example_inputs):
            results.append((rewrite_graph(gm, example_inputs, PassConfig(reuse=reuse)), example_inputs))
            return gm.forward
        with torch.no_grad():
            model(**kwargs)                     # tables the model builds at its first call
            torch._dynamo.reset()
            torch.compile(model, backend=backend, dynamic=False)(**kwargs)
            result, inputs = next((r, i) for r, i in results if r.graph is not None)
            assert result.skip_tail is not None, result.report.skip_steps
            sig = result.report.signature
            states = [s.allocate() for s in sig.states]

            def call(fn, index, step):
                time = torch.tensor(float(step)) if sig.takes_time else None
                return fn(*sig.call_args(inputs, index, states, time))
            for step in range(2):               # a history to forecast from
                call(result.graph, torch.arange(sig.num_image_tokens), step)
            empty = torch.zeros(0, dtype=torch.long)
            tail, graph = call(result.skip_tail, empty, 3), call(result.graph, empty, 3)
        for a, b in zip(tail, graph):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
