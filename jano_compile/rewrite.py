"""Run the passes on one dynamo graph and check the result; never a wrong graph.

`rewrite_graph(gm, example_inputs, config)` returns a `RewriteResult`: the rewritten
GraphModule (or None), the GraphReport, the skip tail (the graph a step that computes no
image token runs; None where the model cannot skip a step) and a builder of the full-step
variant (passes/dense_variant.py). The report of a rewritten graph holds its `GraphSignature`
(passes/signature.py): the extra inputs the passes declared, in order; every variant takes
the same inputs and returns the user outputs.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import logging
from typing import Callable, NamedTuple, Optional

import torch
import torch.fx as fx
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from jano_compile.passes import (NoImageTokens, PassConfig, Unrewritable, dense_variant, rewrite_passes,
                                 skip_tail, token_layout)
from jano_compile.passes.nodes import value
from jano_compile.passes.plan import (CROSS, SELF, TO_IMAGE, AttentionSite, ConstantPad, GridShape, GroupCount,
                                      MixingSite, PointwiseConv, SegmentSlice, ShapeLiteral, SplitSizes,
                                      SqueezeDims, TokenPlan)
from jano_compile.passes.signature import GraphSignature, graph_signature

from .fake_inputs import fake_inputs
from .report import GraphReport

log = logging.getLogger(__name__)


def _describe_error(e: Exception, limit: int = 300) -> str:
    """`TypeName: first line of the message` (the message may be empty)."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:limit] if lines else ''}".rstrip(": ")


def graph_name(gm: fx.GraphModule) -> str:
    return "graph_" + hashlib.sha1(gm.code.encode()).hexdigest()[:10]


def _describe_shape_literal(edit: ShapeLiteral) -> str:
    how = "-1" if edit.use_minus_one else "gathered length"
    return f"shape[{edit.position}] {edit.layout.full_length} -> {how} of {edit.layout}"


def _describe_segment_slice(edit: SegmentSlice) -> str:
    return f"slice of {edit.layout.segments[edit.segment].kind} segment of {edit.layout} -> gathered bounds"


#: the report's line for each kind of literal edit (passes/plan.py), as token_shapes applies it
_LITERAL_DESCRIPTIONS = {
    ShapeLiteral: _describe_shape_literal,
    SplitSizes: lambda e: f"split sizes {[s.size for s in e.layout.segments]} -> per-segment gathered sizes",
    SegmentSlice: _describe_segment_slice,
    SqueezeDims: lambda e: f"squeeze() -> squeeze({e.dims})",
    GroupCount: lambda e: f"unflatten sizes[{e.position}]: frames of {e.layout} -> n groups of one token",
    GridShape: lambda e: f"sizes from {e.first} on the token grid -> grid axis 0 holds n, the others 1",
    ConstantPad: lambda e: "constant pad of other axes -> cat of constant blocks",
    PointwiseConv: lambda e: "1x1 convolution on the token grid -> linear over channels",
}


def _describe_literal(edit) -> str:
    describe = _LITERAL_DESCRIPTIONS.get(type(edit))
    return repr(edit) if describe is None else describe(edit)


def _describe_mixing(site: MixingSite) -> dict:
    how = ("its active tokens gathered from the full result" if site.output is not None
           else "its result holds no image token")
    return {"node": site.node.name, "operands": [o.arg.name for o in site.operands], "how": how}


_ATTENTION_HOW = {SELF: "Q gathered, K/V completed from cache",
                  CROSS: "Q gathered, K/V from text untouched",
                  TO_IMAGE: "Q untouched (no image token), K/V completed from cache"}


def _describe_attention(site: AttentionSite) -> dict:
    """One attention site for the report; `layout`: the image-holding side's token layout."""
    axis = site.query if site.query is not None else site.key
    return {"node": site.node.name, "kind": site.kind, "layout": str(axis.layout),
            "how": _ATTENTION_HOW[site.kind]}


def _report(name: str, plan: TokenPlan, signature: GraphSignature) -> GraphReport:
    attention = [_describe_attention(s) for s in plan.attention]
    return GraphReport(
        graph=name, rewritten=True, num_image_tokens=plan.num_image_tokens,
        entry=plan.entry.name, exit=plan.exit.name, attention=attention,
        literals=[{"node": e.node.name, "what": _describe_literal(e)} for e in plan.literals],
        tables=[{"node": t.node.name, "table": t.arg.name, "dim": t.dim, "layout": str(t.layout)}
                for t in plan.tables],
        mixing=[_describe_mixing(m) for m in plan.mixing],
        signature=signature)


def _validate(gm: fx.GraphModule, original: fx.GraphModule, example_inputs, signature: GraphSignature):
    """Shape-check the rewritten graph at a length that differs from N (a literal or table we
    missed fails here), then annotate it with symbolic shapes for dumps and Inductor."""
    n = signature.num_image_tokens
    out_node = next(x for x in original.graph.nodes if x.op == "output")
    expected = [tuple(value(a).shape) for a in out_node.args[0] if isinstance(value(a), torch.Tensor)]
    for probe in sorted({max(n - 1, 0), n // 2 + 1}):
        mode, fakes = fake_inputs(signature, example_inputs, num_active=probe)
        try:
            with mode:
                outs = FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fakes)
        except Exception as e:  # noqa: BLE001 - any failure means: do not rewrite
            raise Unrewritable(f"shape check with {probe} active tokens failed: "
                               f"{_describe_error(e, 200)}") from e
        got = [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]
        if got[:len(expected)] != expected:
            raise Unrewritable(f"outputs change shape with {probe} active tokens: {got} vs {expected}")
    mode, fakes = fake_inputs(signature, example_inputs)
    with mode:
        FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fakes)
    if mode.shape_env.replacements:
        raise Unrewritable(f"the active-token count got specialised: {mode.shape_env.replacements}")


class RewriteResult(NamedTuple):
    graph: Optional[fx.GraphModule]     # the rewritten graph; None when left as it is
    report: GraphReport
    skip_tail: Optional[fx.GraphModule] = None
    # full_variant(): builds the full-step variant (all tokens at a static length, caches
    # filled) when a runner asks for it; None where it cannot be built, and full steps then
    # run the rewritten graph
    full_variant: Optional[Callable[[], Optional[fx.GraphModule]]] = None


def _tail(work: fx.GraphModule, report: GraphReport) -> Optional[fx.GraphModule]:
    """The skip tail of a rewritten graph, or None with the reason in the report."""
    try:
        tail = skip_tail(work)
    except Unrewritable as e:
        report.skip_steps = e.reason
        return None
    except Exception as e:  # noqa: BLE001 - the model still runs, it only never skips a step
        log.warning("jano: no skip tail for %s", report.graph, exc_info=True)
        report.skip_steps = f"internal error building the skip tail: {_describe_error(e)}"
        return None
    calls = sum(n.op.startswith("call") for n in tail.graph.nodes)
    report.skip_steps = f"a tail of {calls} ops runs instead of the model"
    return tail


def rewrite_graph(gm: fx.GraphModule, example_inputs, config: PassConfig = PassConfig()) -> RewriteResult:
    name = graph_name(gm)
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                       for t in example_inputs):
        return RewriteResult(None, GraphReport(name, False, "autograd is recording (jano is for "
                             "inference: call under torch.no_grad() or torch.inference_mode())"))
    work = copy.deepcopy(gm)
    try:
        plan = token_layout(work)
    except Unrewritable as e:
        return RewriteResult(None, GraphReport(name, False, e.reason,
                                               holds_image_tokens=not isinstance(e, NoImageTokens)))
    except Exception as e:  # noqa: BLE001 - an analysis bug must not break the user's model
        log.warning("jano: analysis of %s failed", name, exc_info=True)
        return RewriteResult(None, GraphReport(name, False, f"internal error in the token analysis: "
                                               f"{_describe_error(e)}"))
    try:
        for p in rewrite_passes(config):
            work = p(work, plan)
            log.debug("after %s:\n%s", getattr(p, "func", p).__name__, work.graph)
        work.graph.lint()
        work.recompile()
        signature = graph_signature(work)
        _validate(work, gm, example_inputs, signature)
        report = _report(name, plan, signature)
    except Unrewritable as e:
        return RewriteResult(None, GraphReport(name, False, e.reason))
    except Exception as e:  # noqa: BLE001 - a pass bug (SignatureError too) must not break the model
        log.warning("jano: rewrite of %s failed", name, exc_info=True)
        return RewriteResult(None, GraphReport(name, False, f"internal error in the rewrite: {_describe_error(e)}"))
    return RewriteResult(work, report, _tail(work, report), functools.partial(_full_variant, work, name))


def _full_variant(work: fx.GraphModule, name: str) -> Optional[fx.GraphModule]:
    """dense_variant(work), or None (full steps then run the rewritten graph)."""
    try:
        return dense_variant(work)
    except Exception:  # noqa: BLE001 - the model still runs, full steps take the rewritten graph
        log.warning("jano: no full-step variant for %s", name, exc_info=True)
        return None
