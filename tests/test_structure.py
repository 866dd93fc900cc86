"""Structure of the rewrite: which ops appear and disappear, what the report counts, and the
near misses that must not be rewritten."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import jano_compile

from .capture import count_calls, snapshot
from .models import FAMILIES
from .toy import ToyDiT


class AttentionCalls(TorchFunctionMode):
    """Counts sdpa calls of an eager run: self/joint when keys are as long as queries."""

    def __init__(self):
        super().__init__()
        self.self_calls = self.cross_calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q = kwargs.get("query", args[0] if args else None)
            k = kwargs.get("key", args[1] if len(args) > 1 else None)
            if q.shape[-2] == k.shape[-2]:
                self.self_calls += 1
            else:
                self.cross_calls += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_report_counts_every_attention(family):
    model, kwargs, n = FAMILIES[family].build(b=1, layers=2)
    model.eval()
    with torch.no_grad(), AttentionCalls() as calls:
        model(**kwargs, return_dict=False)
    snap = snapshot(model, **kwargs, return_dict=False)
    (report,) = snap.reports
    assert report.rewritten, report.reason
    assert report.num_image_tokens == n
    assert report.self_attention_count == calls.self_calls
    assert report.cross_attention_count == calls.cross_calls
    # one K and one V cache per self-attention, plus the output cache
    assert len(report.caches) == 2 * calls.self_calls + 1
    after = snap.after[0]
    assert count_calls(after, torch.index_select) >= 1          # the entry gather
    assert count_calls(after, torch.index_copy) == 1                # the exit scatter
    # in-place writes: every K and V cache, and the output cache
    assert count_calls(after, torch.ops.aten.index_copy_.default) == 2 * calls.self_calls + 1
    assert count_calls(after, F.scaled_dot_product_attention) == calls.self_calls + calls.cross_calls


def test_toy_model_is_rewritten_and_exact():
    """tests/toy.py: rewritten with both self-attentions; the full step equals the eager
    model, and partial steps (none, some, all but one token) equal the full step."""
    model = ToyDiT().eval()
    x = torch.randn(2, 4, 8, 8)
    snap = snapshot(model, x)
    assert snap.reports[0].rewritten, snap.reports[0].reason
    assert snap.reports[0].self_attention_count == 2
    torch._dynamo.reset()
    with torch.no_grad():
        reference = model(x)[0]
        compiled = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
        ctl = jano_compile.controller(compiled)
        full = compiled(x)[0]
        torch.testing.assert_close(full, reference, atol=1e-5, rtol=1e-5)
        for active in ([], [0, 5, 9], list(range(1, 16))):
            ctl.set_active(torch.tensor(active, dtype=torch.long))
            torch.testing.assert_close(compiled(x)[0], full, atol=1e-5, rtol=1e-5)
            assert ctl.last_call.active == len(active) and not ctl.last_call.full


@pytest.mark.parametrize("switch,why", [("token_cumsum", "each output token reads the tokens before it"),
                                        ("manual_attention", "matmul contracts over image tokens")])
def test_near_miss_is_not_rewritten(switch, why):
    model = ToyDiT(**{switch: True}).eval()
    x = torch.randn(2, 4, 8, 8)
    snap = snapshot(model, x)
    (report,) = snap.reports
    assert not report.rewritten
    assert why in report.reason
    # through the backend: a warning, plain execution, the same result as eager
    with torch.no_grad():
        reference = model(x)[0]
        compiled = torch.compile(model, backend="jano", options={"lowering": "eager"})
        with pytest.warns(UserWarning, match=why):
            out = compiled(x)[0]
        stats = jano_compile.controller(compiled).stats()
    torch.testing.assert_close(out, reference)
    assert stats["rewritten"] is False and why in stats["fallback_reason"]


def test_literal_equal_to_token_count_is_rewritten_by_axis_not_value():
    """FLUX with 16 image tokens, head dim 16 and text length 16: only the token-axis
    literals change."""
    model, kwargs, n = FAMILIES["flux"].build(b=1, h=4, w=4, text=16, head_dim=16)
    snap = snapshot(model.eval(), **kwargs, return_dict=False)
    report = snap.reports[0]
    assert report.rewritten, report.reason
    after = snap.after[0]
    reshapes = [nd for nd in after.graph.nodes if nd.target in ("reshape", "view")]
    for nd in reshapes:
        if 32 in nd.args[1:]:          # text 16 + image 16 on the joint axis
            pytest.fail(f"{nd.name} still holds the full joint length: {nd.args}")
    # reshapes: only the positions the report names changed (and a -1 spelled out as its
    # static size)
    reported = {}
    for lit in report.literals:
        if lit["what"].startswith("shape["):
            reported.setdefault(lit["node"], set()).add(int(lit["what"][len("shape["):].split("]")[0]))
    before = {nd.name: nd for nd in snap.before[0].graph.nodes}
    for nd in reshapes:
        old = before[nd.name].args[1:]
        full = tuple(before[nd.name].meta["example_value"].shape)
        changed = {i for i, (x, y) in enumerate(zip(old, nd.args[1:]))
                   if not (x is y or x == y or (x == -1 and y == full[i]))}
        assert changed == reported.get(nd.name, set()), (nd.name, old, nd.args[1:])
    # the 16s that are no token count stay: the head dim, the text segment's size
    heads = [nd for nd in after.graph.nodes if nd.target == "unflatten" and tuple(nd.args[2]) == (-1, 16)]
    assert heads, "the head dim 16 is kept"
    (split,) = [nd for nd in after.graph.nodes if nd.target == "split_with_sizes"]
    text, image = split.args[1]
    assert text == 16 and isinstance(image, torch.fx.Node), split.args


def test_explain_says_what_it_takes():
    from .pipelines import flux_pipeline
    pipe, inputs = flux_pipeline()
    with pytest.raises(TypeError, match="a pipeline: pass pipe.transformer"):
        jano_compile.explain(pipe, **inputs)
    with pytest.raises(TypeError, match="give it the inputs of one call"):
        jano_compile.explain(pipe.transformer)


def test_explain_leaves_no_compile_behind_on_the_models_code():
    """FLUX's forward is diffusers' `*args, **kwargs` wrapper, whose code ~30 classes share:
    explain() compiled it once per call, and past dynamo's recompile limit (8) later
    explain() calls and torch.compile of any such model ran it eagerly, uncompiled."""
    torch._dynamo.reset()
    limit = 8                   # dynamo's default, whatever another test left in the config
    with torch._dynamo.config.patch(recompile_limit=limit):
        for _ in range(limit + 1):
            model, kwargs, _ = FAMILIES["flux"].build(b=1)
            assert jano_compile.explain(model.eval(), **kwargs).rewritten
        model, kwargs, _ = FAMILIES["flux"].build(b=1)
        compiled = torch.compile(model.eval(), backend="jano", dynamic=False, options={"lowering": "eager"})
        with torch.no_grad():
            compiled(**kwargs)
    assert jano_compile.controller(compiled).stats()["rewritten"]


def test_explain_names_positional_inputs_as_the_models_compile_does():
    """explain() passes inputs by the forward's parameter names: a toy DiT whose forward
    takes `sample` is not rewritten by explain() either (it was, as `args[0]`), and one that
    takes `hidden_states` positionally is."""
    class SampleDiT(ToyDiT):
        def forward(self, sample):
            return super().forward(sample)
    x = torch.randn(1, 4, 8, 8)
    assert not jano_compile.explain(SampleDiT().eval(), x).rewritten
    assert jano_compile.explain(ToyDiT().eval(), x).rewritten


def test_explain_and_dump(tmp_path):
    model, kwargs, n = FAMILIES["sd3"].build(b=1)
    model.eval()
    report = jano_compile.explain(model, **kwargs, return_dict=False)
    assert report.rewritten
    text = str(report)
    assert "self" in text and "literal" in text and "table" in text
    assert json.loads(report.to_json())[0]["num_image_tokens"] == n

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend="jano", options={"lowering": "eager", "dump_dir": str(tmp_path)})(
            **kwargs, return_dict=False)
    (graph_dir,) = list(tmp_path.iterdir())
    names = sorted(os.listdir(graph_dir))
    assert names == ["after.txt", "before.txt", "report.json", "report.txt", "skip_tail.txt"]
    torch._dynamo.reset()
    with torch.no_grad():       # static shapes: the full-step graph, without the entry gather
        torch.compile(model, backend="jano", options={"lowering": "eager", "dump_dir": str(tmp_path / "static"),
                                                      "static_shapes": True})(**kwargs, return_dict=False)
    (static_dir,) = list((tmp_path / "static").iterdir())
    assert "full_step.txt" in os.listdir(static_dir)

    def gathers(name):
        return (static_dir / name).read_text().split("# generated code")[0].count("index_select")
    assert gathers("full_step.txt") < gathers("after.txt")
    after = (graph_dir / "after.txt").read_text()
    assert "index_select" in after and "active_index" in after and "k_cache_0" in after
    assert "float32[1, 64, 16]" in (graph_dir / "before.txt").read_text()
    assert json.loads((graph_dir / "report.json").read_text())["rewritten"] is True


def test_every_literal_edit_kind_is_rewritten_and_reported():
    """The plan's kinds of literal edit (plan.LiteralEdit) each have their rewrite in
    token_shapes and their line in the report: a kind added in one place only is caught here,
    not by a model that happens to need it."""
    import sys
    import typing

    from jano_compile.passes.plan import LiteralEdit
    from jano_compile.rewrite import _LITERAL_DESCRIPTIONS

    kinds = set(typing.get_args(LiteralEdit))
    rewrites = sys.modules["jano_compile.passes.token_shapes"]._LITERAL_REWRITES
    assert kinds and set(rewrites) == kinds and set(_LITERAL_DESCRIPTIONS) == kinds
