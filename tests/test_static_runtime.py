"""The GPU path of the runtime, on the CPU where it can run: states written in place,
static index lengths (exact and bucketed, padded by repeating an active position), and the
static-buffer calls that CUDA graphs replay. The CUDA-graph tests run where CUDA is."""
import copy

import pytest
import torch

import jano_compile
from jano_compile.passes.signature import Role
from jano_compile.options import STATIC_BUCKETS as BUCKETS
from jano_compile.runner import bucket_length, padded_index
from jano_compile.static_call import StaticCall

from .models import FAMILIES, flux
from .oracle import TOLERANCE, check_oracle

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device,options,expected", [
    # device, options -> (static graphs per length and for full steps, static calls, CUDA capture)
    ("cpu", {}, (False, False, False)),                      # one symbolic graph for every step
    ("cpu", {"static_shapes": True}, (True, False, False)),
    ("cpu", {"cuda_graphs": True}, (False, True, False)),    # static buffers, nothing to capture
    ("cpu", {"cuda_graphs": True, "static_shapes": True}, (True, True, False)),
    ("cuda", {}, (False, False, False)),                     # the symbolic graph on a GPU too
    ("cuda", {"mode": "reduce-overhead"}, (False, True, True)),   # ... captured per length
    ("cuda", {"mode": "max-autotune"}, (False, True, True)),
    ("cuda", {"mode": "reduce-overhead", "static_shapes": True}, (True, True, True)),
    ("cuda", {"mode": "reduce-overhead", "cuda_graphs": False}, (False, False, False)),
    ("cuda", {"static_shapes": True}, (True, False, False)),
    ("cuda", {"mode": "max-autotune-no-cudagraphs"}, (False, False, False)),
])
def test_run_modes_as_documented(device, options, expected):
    from jano_compile.options import parse_options
    from jano_compile.runner import RunMode
    mode = RunMode.resolve(parse_options(None, options), torch.device(device))
    assert (mode.static_shapes, mode.static_calls, mode.capture) == expected


def test_bucket_length_is_the_smallest_bucket_that_holds_n():
    for n_tokens in (16, 64, 100, 4096):
        for buckets in (1, 16, 64, n_tokens):
            step = -(-n_tokens // buckets)
            for n in range(1, n_tokens + 1):
                length = bucket_length(n, n_tokens, buckets)
                assert n <= length <= n_tokens and (length % step == 0 or length == n_tokens)
                assert length - n < step


def test_padding_repeats_an_active_position():
    index = torch.tensor([2, 5, 9])
    padded = padded_index(index, 6)
    assert padded.tolist()[:3] == [2, 5, 9] and set(padded.tolist()) == {2, 5, 9}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("options", [{"static_shapes": True}, {"cuda_graphs": True}], ids=["static", "calls"])
def test_static_lengths_agree_with_the_eager_model(family, options, monkeypatch):
    """Counts just below, at and above a bucket edge, 0 and all: one static graph per
    bucket (static shapes), or the one symbolic graph, lowered once, through one static call
    per bucket (what CUDA graphs capture: manual sets padded to N / 16 there too), each
    length equal to the eager model (the oracle). (No set runs unpadded here: see
    test_kept_sets_run_unpadded.)"""
    monkeypatch.setattr("jano_compile.manual_policy.MAX_EXACT_LENGTHS", 0)
    size = dict(h=8, w=8)
    n = 64 * (2 if family in ("wan", "cogvideox", "cogvideox_rope") else 1)
    step = -(-n // BUCKETS)
    subsets = [[], list(range(step - 1)), list(range(step)), list(range(step + 1)),
               list(range(0, n, 2)), list(range(n))]
    ctl, _ = check_oracle(family, 2, torch.float32, subsets, options=options, **size)
    expected = {step, 2 * step, n // 2, n}    # each count rounded up to a multiple of N / 16
    (graph,) = ctl._graphs.values()
    if "static_shapes" in options:
        assert ctl.stats()["static_graphs"] == len(expected) == 4
    else:
        partial_lengths = {numel for name, numel, _ in graph.runner._calls if name[0] == "partial"}
        assert partial_lengths == expected and ctl.stats()["static_graphs"] == 0
        assert not graph.runner.mode.static_shapes and graph.runner.lowered.compiles == 1


def test_static_buckets_sets_the_padded_lengths(monkeypatch):
    """options={"static_buckets": b}: a manual set of n tokens runs a graph of the smallest
    multiple of N / b that holds it, and still matches the eager model."""
    monkeypatch.setattr("jano_compile.manual_policy.MAX_EXACT_LENGTHS", 0)
    n = 64
    subsets = [list(range(0, n, 5)), list(range(0, n, 3))]      # 13 and 22 tokens
    for buckets, lengths in ((4, {16, 32}), (32, {14, 22})):
        ctl, _ = check_oracle("flux", 1, torch.float32, subsets,
                              options={"static_shapes": True, "static_buckets": buckets}, h=8, w=8)
        (graph,) = ctl._graphs.values()
        assert set(graph.runner.static) == lengths


@pytest.mark.parametrize("options", [{"static_shapes": True}, {"cuda_graphs": True}], ids=["static", "calls"])
def test_kept_sets_run_unpadded(options):
    """A manual set that stays (set_active once, then step after step) runs at its own
    length, and so does a second one; from the third new length on, sets are padded to
    their bucket, while the lengths set before stay unpadded. Each equals the eager model."""
    n = 64                                   # FLUX at 8 x 8: buckets of N / 16 = 4 tokens
    kept, other, third = list(range(0, n, 5)), list(range(0, n, 3)), [1, 9, 20, 33, 40]
    subsets = [kept, kept, other, third, kept, third, other[:-1] + [n - 1]]
    ctl, _ = check_oracle("flux", 1, torch.float32, subsets, options=options, h=8, w=8)
    (graph,) = ctl._graphs.values()
    runner = graph.runner
    lengths = (set(runner.static) if "static_shapes" in options
               else {numel for name, numel, _ in runner._calls if name[0] == "partial"} - {n})
    assert lengths == {len(kept), len(other), 8}      # 13 and 22 unpadded, 5 -> 8 (and full steps at N)


def test_sets_used_in_turn_keep_their_device_copies():
    """Two manual sets used in turn (each set_active() a new tensor of the same positions)
    are each copied to the index's device once: the policy hands back the tensor it saw
    before, whose device copy the runner keeps. Both runs equal the eager model."""
    n = 64
    first, second = list(range(0, n, 5)), list(range(1, n, 4))
    ctl, _ = check_oracle("flux", 1, torch.float32, [first, second, first, second, first],
                          options={"cuda_graphs": True}, h=8, w=8)
    (graph,) = ctl._graphs.values()
    assert len(graph.runner._on_device) == 2


def test_empty_and_full_sets_spend_no_exact_length():
    """0 tokens (no graph) and all N (its own bucket) are never padded: they leave both
    unpadded lengths to the sets that follow."""
    from jano_compile.manual_policy import MAX_EXACT_LENGTHS, ManualPolicy
    policy = ManualPolicy()
    exact = []
    for index in ([], list(range(16)), [1, 2], [1, 2, 3], [4, 5], [1, 2, 3, 4, 5]):
        policy.set_active(torch.tensor(index, dtype=torch.long), 16)
        exact.append(policy.exact)
    assert MAX_EXACT_LENGTHS == 2 and exact == [True, True, True, True, True, False]


def test_the_policy_remembers_a_few_recent_sets():
    from jano_compile.manual_policy import MAX_RECENT_SETS, ManualPolicy
    policy = ManualPolicy()
    policy.set_active(torch.tensor([3, 1]), 16)
    kept = policy.active
    for k in range(MAX_RECENT_SETS - 1):
        policy.set_active(torch.tensor([k + 5]), 16)
    policy.set_active(torch.tensor([1, 3]), 16)          # the same positions, a new tensor
    assert policy.active is kept
    for k in range(MAX_RECENT_SETS):
        policy.set_active(torch.tensor([k + 5, k + 6]), 16)
    policy.set_active(torch.tensor([1, 3]), 16)          # forgotten: a tensor of its own
    assert policy.active is not kept and policy.active.tolist() == [1, 3]


def test_lengths_past_the_static_call_bound_run_uncaptured(monkeypatch):
    """The symbolic graph under ever new lengths: after MAX_STATIC_CALLS static calls, new
    lengths run the lowered graph directly, still equal to the eager model."""
    import jano_compile.runner as runner_module
    monkeypatch.setattr(runner_module, "MAX_STATIC_CALLS", 2)
    subsets = [list(range(k)) for k in (3, 7, 11, 15)]     # four buckets of N / 16 = 4 tokens
    ctl, _ = check_oracle("flux", 1, torch.float32, subsets, options={"cuda_graphs": True}, h=8, w=8)
    (graph,) = ctl._graphs.values()
    assert len(graph.runner._calls) == 2     # the full step's and the first length's


@pytest.mark.parametrize("static", [False, True])
def test_full_steps_run_the_full_variant_under_static_shapes(static, monkeypatch):
    """Static shapes: the full-step variant is built once (a deep copy and a pass) and full
    steps run it; symbolic (the default, on a GPU too): full steps run the rewritten graph
    (one compile for every step), no variant is built."""
    import jano_compile.rewrite as rewrite
    built = []
    original = rewrite.dense_variant
    monkeypatch.setattr(rewrite, "dense_variant", lambda gm: built.append(gm) or original(gm))
    model, kwargs, n = flux(b=1, h=4, w=4)
    f = torch.compile(model, backend="jano", options={"lowering": "eager", "static_shapes": static})
    with torch.no_grad():
        f(**kwargs, return_dict=False)
        ctl = jano_compile.controller(f)
        ctl.refresh()
        f(**kwargs, return_dict=False)
    (graph,) = ctl._graphs.values()
    assert len(built) == static
    if static:
        assert graph.runner.full.compiles == 1 and graph.runner.lowered.compiles == 0
    else:
        assert graph.runner.full is None and graph.runner.lowered.compiles == 1
    torch._dynamo.reset()


def test_a_full_step_shares_the_static_call_of_all_tokens():
    """Static calls without static shapes: a full step and a partial step of all N tokens
    run the same graph at the same length, so they share one static call (one capture on
    CUDA), and both equal the eager model."""
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    f = torch.compile(model, backend="jano", options={"lowering": "eager", "cuda_graphs": True})
    ctl = jano_compile.controller(f)
    with torch.no_grad():
        reference = model(**kwargs, return_dict=False)[0]
        for control in (None, lambda: ctl.set_active(torch.arange(n)), ctl.refresh):
            if control is not None:     # the first call is a full step
                control()
            torch.testing.assert_close(f(**kwargs, return_dict=False)[0], reference,
                                       **TOLERANCE[torch.float32])
    (graph,) = ctl._graphs.values()
    assert [(name, numel) for name, numel, _ in graph.runner._calls] == [(("partial", n), n)]
    torch._dynamo.reset()


@pytest.mark.parametrize("forecast_kv", [False, True])
def test_the_full_variant_attends_to_the_caches_it_fills(forecast_kv):
    """The full-step variant writes each layer's fresh K/V into its cache and attention reads
    the cache (as partial steps do), so K and V are written once; it gathers neither an
    input nor a position table (the rewritten graph gathers both). With forecast K/V,
    partial steps read the forecasts; a full step reads its caches too."""
    from jano_compile.passes import PassConfig
    from jano_compile.passes.signature import ENTRY_GATHER, STATE_WRITE, TABLE_GATHER
    from jano_compile.rewrite import rewrite_graph
    captured = {}
    config = PassConfig(reuse="forecast", forecast_kv=True) if forecast_kv else PassConfig()

    def backend(gm, example_inputs):
        captured["result"] = rewrite_graph(gm, example_inputs, config)
        return gm.forward

    model, kwargs, _ = flux(b=1, h=4, w=4, layers=2, single_layers=1)
    with torch.no_grad():
        torch.compile(model, backend=backend, dynamic=False)(**kwargs, return_dict=False)
    result = captured["result"]
    caches = {s.name for s in result.report.signature.states if s.role in (Role.K_CACHE, Role.V_CACHE)}
    assert len(caches) == 6

    def attention_reads(gm):
        """{cache name or 'fresh'} read as key and value by each attention of `gm`."""
        sites = [n for n in gm.graph.nodes if "scaled_dot_product_attention" in str(n.target)]
        arguments = [dict(zip(("query", "key", "value"), n.args)) | n.kwargs for n in sites]
        return [[a[name].meta.get(STATE_WRITE, "fresh") for name in ("key", "value")] for a in arguments]

    full = result.full_variant()
    assert sorted(sum(attention_reads(full), [])) == sorted(caches)
    assert attention_reads(result.graph) == (
        [["fresh", "fresh"]] * 3 if forecast_kv else attention_reads(full))
    def gathers(gm):
        """Index_selects of inputs and of position tables (not the states' own old rows,
        which forecast K/V reads before it overwrites them)."""
        return sum(bool(n.meta.get(ENTRY_GATHER) or n.meta.get(TABLE_GATHER)) for n in gm.graph.nodes)
    assert gathers(result.graph) > 2 and gathers(full) == 0
    torch._dynamo.reset()


def test_a_static_call_runs_on_its_buffers_and_knows_when_inputs_moved():
    """Activations are copied into its buffers at every call (the results follow the new
    values); a static input with a new storage, a buffer of another shape or another
    constant do not match (the runner then makes a new call)."""
    weight, state = torch.ones(3), torch.zeros(3)

    def fn(x, w, s, scale):
        s.add_(x)                       # a state written in place
        return (x * w * scale + s,)

    x = torch.arange(3.0)
    call = StaticCall(fn, [x, weight, state, 2.0], frozenset({1, 2}), capture=False)
    assert torch.equal(call([x, weight, state, 2.0])[0], x * 2 + x)
    y = torch.full((3,), 5.0)
    assert call.matches([y, weight, state, 2.0])
    assert torch.equal(call([y, weight, state, 2.0])[0], y * 2 + x + y)
    assert state.tolist() == (x + y).tolist()            # the state itself was written
    assert not call.matches([y, weight.clone(), state, 2.0])
    assert not call.matches([torch.ones(4), weight, state, 2.0])
    assert not call.matches([y, weight, state, 3.0])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN equal to the same NaN)."""
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def _states(ctl):
    (graph,) = ctl._graphs.values()
    ((_, state),) = [(k, s) for k, s in ctl.store._states.items()]
    return graph.signature, state


@pytest.mark.parametrize("reuse", ["hold", "forecast"])
def test_states_are_written_in_place(reuse):
    """After a partial step the states are the same tensors (same storage), and the rows of
    the tokens it skipped are bitwise unchanged: K/V, held outputs, forecast history."""
    model, kwargs, n = flux(b=2, h=4, w=4)
    f = torch.compile(model.eval(), backend="jano", options={"lowering": "eager", "reuse": reuse})
    ctl = jano_compile.controller(f)
    with torch.no_grad():
        f(**kwargs, return_dict=False)
        sig, state = _states(ctl)
        before = [t.clone() for t in state.tensors]
        addresses = [t.data_ptr() for t in state.tensors]
        active = torch.tensor([1, 6, 7, 12])
        ctl.set_active(active)
        f(**{**kwargs, "hidden_states": kwargs["hidden_states"] + 1}, return_dict=False)
    skipped = torch.tensor([i for i in range(n) if i not in active.tolist()])
    assert [t.data_ptr() for t in state.tensors] == addresses
    changed = 0
    for spec, old, new in zip(sig.states, before, state.tensors):
        text = spec.shape[spec.token_dim] - n          # FLUX: [text | image]
        rows = skipped + text
        assert _same_bits(old.index_select(spec.token_dim, rows), new.index_select(spec.token_dim, rows)), spec.name
        changed += not _same_bits(old, new)
    assert changed == len(sig.states)    # and each state took the computed tokens' rows
    assert {s.role for s in sig.states} >= ({Role.HISTORY} if reuse == "forecast" else {Role.OUT_CACHE})


def _cfg_steps(f, ctl, kwargs, n):
    """Split CFG by hand: per step a cond and an uncond call (their own branch), full
    steps, then two active sets of different lengths; returns every output."""
    uncond = {**kwargs, "encoder_hidden_states": torch.zeros_like(kwargs["encoder_hidden_states"])}
    outputs = []
    plan = [None, None, torch.arange(0, n, 3), torch.arange(0, n, 3), torch.arange(5), None, torch.arange(5)]
    with torch.no_grad():
        for step, index in enumerate(plan):
            for branch, kw in (("cond", kwargs), ("uncond", uncond)):
                ctl.branch_name = branch
                if index is None:
                    ctl.refresh()
                else:
                    ctl.set_active(index)
                x = kw["hidden_states"] * (1 + 0.1 * step)
                outputs.append(f(**{**kw, "hidden_states": x}, return_dict=False)[0])
    return outputs


def test_static_buffer_calls_equal_direct_calls():
    """`cuda_graphs=True` on a CPU: every call copies its inputs and index into buffers the
    runner owns and runs on those (what a CUDA graph replays). Split CFG, two lengths and
    refreshes give the same outputs, bitwise, as direct calls."""
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    results = {}
    for static in (False, True):
        m = copy.deepcopy(model)
        f = torch.compile(m, backend="jano", options={"lowering": "eager", "cuda_graphs": static})
        ctl = jano_compile.controller(f)
        results[static] = _cfg_steps(f, ctl, kwargs, n)
        (graph,) = ctl._graphs.values()
        assert bool(graph.runner._calls) == static
        assert ctl.stats()["cuda_graphs"] == 0      # no capture off CUDA
    for direct, buffered in zip(results[False], results[True]):
        assert torch.equal(direct, buffered)
    assert not torch.equal(results[True][0], results[True][1])   # the branches differ


@cuda
@pytest.mark.parametrize("family,static_shapes", [("flux", None), ("sd3", None), ("flux", True)])
def test_cuda_graphs_reduce_overhead(family, static_shapes):
    """mode="reduce-overhead": every step a replay, equal to the eager model; no cudagraph
    skip; an output held across a later replay of the same graph stays as it was. Held
    outputs (`reuse="hold"`): the later call computes garbage on purpose, which a forecast
    would extrapolate from. static_shapes=None: the symbolic graph captured per length;
    True: a static graph per length."""
    from torch._dynamo.utils import counters
    counters.clear()
    subsets = [list(range(5)), list(range(0, 64, 2)), list(range(5)), list(range(64))]
    model, kwargs, n = FAMILIES[family].build(b=1, h=8, w=8)
    model = model.to("cuda").eval()
    kwargs = {k: v.to("cuda") if torch.is_tensor(v) else v for k, v in kwargs.items()}
    tol = TOLERANCE[torch.float32]
    with torch.no_grad():
        reference = model(**kwargs, return_dict=False)[0]
        f = torch.compile(model, backend="jano", options={"mode": "reduce-overhead", "reuse": "hold",
                                                          "static_shapes": static_shapes})
        ctl = jano_compile.controller(f)
        for _ in range(2):
            ctl.refresh()
            torch.testing.assert_close(f(**kwargs, return_dict=False)[0], reference, **tol)
            for positions in subsets:
                ctl.set_active(torch.tensor(positions))
                held = f(**kwargs, return_dict=False)[0]
                copy_of_held = held.clone()
                torch.testing.assert_close(held, reference, **tol)
                ctl.set_active(torch.tensor(positions))
                f(**{**kwargs, "hidden_states": kwargs["hidden_states"] * 0}, return_dict=False)
                assert torch.equal(held, copy_of_held)
                ctl.refresh()
                f(**kwargs, return_dict=False)
    stats = ctl.stats()
    assert stats["cuda_graphs"] >= 3 and not stats["capture_failures"], stats
    assert counters["inductor"]["cudagraph_skips"] == 0


@cuda
def test_cuda_graphs_in_a_pipeline_equal_uncaptured_steps():
    """enable(pipe, mode="reduce-overhead") on a GPU: the automatic schedule (full, dense,
    partial and skipped steps) replayed as CUDA graphs gives the image of the same steps
    run without capture."""
    from .pipelines import flux_pipeline
    images, stats = {}, {}
    for mode in (None, "reduce-overhead"):
        torch.manual_seed(0)
        pipe, inputs = flux_pipeline()
        pipe.to("cuda")
        inputs = {k: v.to("cuda") if torch.is_tensor(v) else v for k, v in inputs.items()}
        ctl = jano_compile.enable(pipe, mode=mode)
        with torch.no_grad():
            images[mode] = pipe(**inputs, num_inference_steps=12,
                                generator=torch.Generator("cuda").manual_seed(0)).images
        stats[mode] = ctl.stats()
    assert stats["reduce-overhead"]["cuda_graphs"] >= 2 and stats[None]["cuda_graphs"] == 0
    assert stats["reduce-overhead"]["compute_saved"] > 0
    torch.testing.assert_close(images["reduce-overhead"], images[None], atol=1e-4, rtol=1e-4)


def test_weights_that_move_make_new_static_calls_until_the_runner_gives_up():
    """A parameter given new storage (same dtype and device: dynamo does not recompile) is
    a new static call, each equal to the eager model with the new weights; after
    MAX_RECAPTURES moves the runner stops using static calls and says why."""
    from jano_compile.runner import MAX_RECAPTURES
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    f = torch.compile(model, backend="jano", options={"lowering": "eager", "cuda_graphs": True})
    ctl = jano_compile.controller(f)
    weight = model.proj_out.weight
    with torch.no_grad():
        for move in range(MAX_RECAPTURES + 2):
            weight.data = weight.data * 1.1            # new storage
            ctl.refresh()
            torch.testing.assert_close(f(**kwargs, return_dict=False)[0],
                                       model(**kwargs, return_dict=False)[0], **TOLERANCE[torch.float32])
    (failure,) = ctl.stats()["capture_failures"]
    assert "static calls stopped" in failure


@pytest.mark.parametrize("static", [False, True])
def test_cogvideox_off_its_sample_size_agrees_with_the_eager_model(static):
    """Away from its sample size CogVideoX builds its position table in the graph, filling a
    zero buffer in place (`x.copy_(...)`); the full-step graph must keep that write (FX's
    dead-code elimination does not see a method's side effect), and full and partial steps
    equal the eager model."""
    model, kwargs, _ = FAMILIES["cogvideox"].build(b=1, h=4, w=4)      # sample size 8 x 8 pixels
    model.eval()
    kwargs = {**kwargs, "hidden_states": torch.randn(1, 2, 4, 12, 8)}   # 6 x 4 patches, 2 frames
    n = 2 * 6 * 4
    with torch.no_grad():
        reference = model(**kwargs, return_dict=False)[0]
        f = torch.compile(model, backend="jano", dynamic=False,
                          options={"lowering": "eager", "static_shapes": static})
        ctl = jano_compile.controller(f)
        torch.testing.assert_close(f(**kwargs, return_dict=False)[0], reference, **TOLERANCE[torch.float32])
        ctl.set_active(torch.arange(0, n, 2))
        torch.testing.assert_close(f(**kwargs, return_dict=False)[0], reference, **TOLERANCE[torch.float32])
    assert ctl.stats()["rewritten"]
    torch._dynamo.reset()
