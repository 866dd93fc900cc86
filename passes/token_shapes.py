"""token_shapes: literals that describe the token axis become expressions of the active
count n, and per-token side tables are gathered with the same rows.

Which literal changes is decided by the axis it describes (from `token_layout`), never by
its value: a head dim or a text length may equal the token count.

    before                                       after
    reshape(q, 1, 71, 2, -1, 2)                  reshape(q, 1, n + 7, 2, -1, 2)
    split_with_sizes(h, [7, 64], dim=1)          split_with_sizes(h, [7, n], dim=1)
    h[:, 7:]                                     h[:, 7:]            (open end: unchanged)
    h[:, :64]  on [image 64 | text 5]            h[:, :n].contiguous()
    q[:, :, 6:] = rope(q[:, :, 6:])              q[:, :, 6:] = ...   (CogVideoX, in place)
    expand(f, 3, 8, 8, -1) on the token axis     expand(f, -1, ...)
    q * cos      cos: [1, 71, 1, D] table        q * index_select(cos, 1, rows)   [1, n + 7, 1, D]

Tokens on their grid (Sana's Mix-FFN, grid 4 x 6; SanaVideo's frames folded into the batch):

    x.unflatten(1, (4, 6))                       x.unflatten(1, (n, 1))                [B, n, 1, C]
    g.view(B*F, H, W, C)                         g.view(B*n, 1, 1, C)
    conv2d(g, w [D, C, 1, 1], b)                 linear(g.movedim(1, -1), w.flatten(1), b).movedim(-1, 1)
    F.pad(v, (0, 0, 0, 1), value=1.0)            cat([v, full_like(v.narrow(2, 0, 1), 1.0)], 2)
                                                 (constant_pad_nd and conv read sizes as ints / refuse n = 0)

Per-frame cross-attention (WanAnimate's face adapter; T frames of S/T tokens, keys per frame):

    q.unflatten(1, (T, -1)).flatten(0, 1)        q.unflatten(1, (n, 1)).flatten(0, 1)   [B*n, 1, H, D]
    sdpa(q, k, v)   k: [B*T, L, H, D]            k.unflatten(0, (B, T))
                                                  .index_select(1, rows // (S/T)).flatten(0, 1)
    out.unflatten(0, (B, T)).flatten(1, 2)       out.unflatten(0, (B, n)).flatten(1, 2)  [B, n, C]
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .nodes import arg, op_name, rename, set_shape_args, shape_args_and_form, value
from .plan import (ConstantPad, FrameKeys, GridShape, GroupCount, PointwiseConv, SegmentSlice, ShapeLiteral,
                   SplitSizes, SqueezeDims, TokenPlan)
from .signature import TABLE_GATHER
from .token_inputs import gathered_length, grid_axis_length, layout_rows, num_active, segment_bounds


def _rewrite_literal(graph: fx.Graph, edit) -> None:
    rewrite = _LITERAL_REWRITES.get(type(edit))
    if rewrite is None:     # a plan edit without its rewrite: the graph must not run as it is
        raise TypeError(f"token_shapes has no rewrite for {type(edit).__name__}")
    rewrite(graph, edit)


def _set_token_length(graph: fx.Graph, edit: ShapeLiteral) -> None:
    """reshape/view/expand: the size on the token axis becomes its gathered length (or -1)."""
    shape, form = shape_args_and_form(edit.node)
    if edit.use_minus_one:
        shape[edit.position] = -1
    else:
        # other dims are static: spell out their -1, which is ambiguous when n is 0
        full = value(edit.node).shape
        shape = [full[i] if s == -1 else s for i, s in enumerate(shape)]
        shape[edit.position] = gathered_length(graph, edit.layout)
    set_shape_args(edit.node, shape, form)


def _set_split_sizes(graph: fx.Graph, edit: SplitSizes) -> None:
    """split along the token axis: each segment's size becomes its gathered length."""
    node = edit.node
    sizes = [gathered_length(graph, type(edit.layout)((s,))) for s in edit.layout.segments]
    if "split_size_or_sections" in node.kwargs or "split_sizes" in node.kwargs:
        key = "split_sizes" if "split_sizes" in node.kwargs else "split_size_or_sections"
        node.kwargs = {**node.kwargs, key: sizes}
    else:
        node.args = (node.args[0], sizes) + tuple(node.args[2:])


def _set_segment_bounds(graph: fx.Graph, edit: SegmentSlice) -> None:
    """A slice of one segment of the token axis takes the segment's gathered bounds."""
    node = edit.node
    index = node.args[1]
    items = list(index) if isinstance(index, tuple) else [index]
    start, stop = segment_bounds(graph, edit.layout, edit.segment)
    items[edit.position] = slice(start, stop)
    node.args = (node.args[0], tuple(items) if isinstance(index, tuple) else items[0],
                 *node.args[2:])          # setitem keeps its value
    if node.target is operator.getitem and edit.position > 0:
        _make_contiguous(graph, node)


def _set_squeeze_dims(graph: fx.Graph, edit: SqueezeDims) -> None:
    """squeeze() -> squeeze(dims): the token axis is never squeezed, whatever n is."""
    edit.node.args = (edit.node.args[0], edit.dims)
    edit.node.kwargs = {k: v for k, v in edit.node.kwargs.items() if k != "dim"}


def _set_unflatten_sizes(node: fx.Node, sizes: list) -> None:
    if len(node.args) > 2:
        node.args = (*node.args[:2], tuple(sizes), *node.args[3:])
    else:
        node.kwargs = {**node.kwargs, "sizes": tuple(sizes)}


def _set_group_count(graph: fx.Graph, edit: GroupCount) -> None:
    """unflatten(x, dim, sizes): sizes[position] (a frame count) becomes n, the group size
    after it, if any, 1: (T, -1) -> (n, 1), (B, T) -> (B, n)."""
    sizes = list(arg(edit.node, 2, "sizes"))
    sizes[edit.position] = num_active(graph)
    if edit.position + 1 < len(sizes):
        sizes[edit.position + 1] = 1
    _set_unflatten_sizes(edit.node, sizes)


def _pad_as_cat(graph: fx.Graph, edit: ConstantPad) -> None:
    """F.pad(x, (0, 0, 0, 1), "constant", 1.0) on [B, H, D, n] -> cat([x, ones [B, H, 1, n]], 2),
    each constant block full_like(x.narrow(d, 0, 1), value).expand(-1, .., pad, .., -1)."""
    node = edit.node
    x, pads = node.args[0], list(arg(node, 1, "pad"))
    fill = arg(node, 3, "value", None)
    fill = 0.0 if fill is None else fill
    ndim = value(node).dim()
    out = x
    with graph.inserting_before(node):
        for k in range(len(pads) // 2):
            d, before, after = ndim - 1 - k, pads[2 * k], pads[2 * k + 1]
            if (before, after) == (0, 0):
                continue
            like = graph.call_function(torch.full_like, (graph.call_method("narrow", (out, d, 0, 1)), fill))
            parts = [out]
            if before:
                parts.insert(0, graph.call_method("expand", (like, *[before if i == d else -1 for i in range(ndim)])))
            if after:
                parts.append(graph.call_method("expand", (like, *[after if i == d else -1 for i in range(ndim)])))
            out = graph.call_function(torch.cat, (parts, d))
    node.replace_all_uses_with(out)
    graph.erase_node(node)


def _conv_as_linear(graph: fx.Graph, edit: PointwiseConv) -> None:
    """conv2d(x [B, C, n, 1], w [D, C, 1, 1], b) -> linear(x.movedim(1, -1), w.flatten(1), b).movedim(-1, 1)."""
    node = edit.node
    x, weight, bias = node.args[0], arg(node, 1, "weight"), arg(node, 2, "bias")
    with graph.inserting_before(node):
        channels_last = graph.call_method("movedim", (x, 1, -1))
        matrix = graph.call_method("flatten", (weight, 1))
        mapped = graph.call_function(torch.nn.functional.linear, (channels_last, matrix, bias))
        out = graph.call_method("movedim", (mapped, -1, 1))
    node.replace_all_uses_with(out)
    graph.erase_node(node)


def _set_grid_sizes(graph: fx.Graph, edit: GridShape) -> None:
    """view/reshape/unflatten onto the token grid: the axes holding grid factors take their
    gathered sizes, (B*F, H, W, C) -> (B*n, 1, 1, C); the other sizes are spelled out (a -1
    is ambiguous when n is 0)."""
    node = edit.node
    unflatten = op_name(node) == "unflatten"
    if unflatten:
        sizes, first = list(arg(node, 2, "sizes")), edit.first
    else:
        (sizes, form), first = shape_args_and_form(node), 0
    full = value(node).shape[first:first + len(sizes)]
    sizes = [full[i] if s == -1 else s for i, s in enumerate(sizes)]
    for i, size in enumerate(edit.sizes):
        if size is not None:
            sizes[edit.first - first + i] = grid_axis_length(graph, *size)
    if unflatten:
        _set_unflatten_sizes(node, sizes)
    else:
        set_shape_args(node, sizes, form)


_LITERAL_REWRITES = {
    ShapeLiteral: _set_token_length,
    SplitSizes: _set_split_sizes,
    SegmentSlice: _set_segment_bounds,
    SqueezeDims: _set_squeeze_dims,
    GroupCount: _set_group_count,
    GridShape: _set_grid_sizes,
    ConstantPad: _pad_as_cat,
    PointwiseConv: _conv_as_linear,
}


def _gather_frame_keys(graph: fx.Graph, edit: FrameKeys, frame_of: dict) -> None:
    """k [B*T, L, H, D] -> k.unflatten(0, (B, T)).index_select(1, rows // (S/T)).flatten(0, 1)
    [B*n, L, H, D]: each gathered query token reads the keys of its own frame."""
    key = (edit.layout, edit.group_size)
    if key not in frame_of:       # before the first of these attentions
        rows = layout_rows(graph, edit.layout)
        with graph.inserting_before(edit.node):
            frame_of[key] = graph.call_function(
                torch.div, (rows, edit.group_size), {"rounding_mode": "floor"})
    with graph.inserting_before(edit.node):
        per_frame = graph.call_method("unflatten", (edit.arg, 0, (edit.batch, edit.frames)))
        picked = graph.call_function(torch.index_select, (per_frame, 1, frame_of[key]))
        keys = graph.call_method("flatten", (picked, 0, 1))
    rename(keys, f"{edit.arg.name}_by_frame")
    edit.node.replace_input_with(edit.arg, keys)


def _make_contiguous(graph: fx.Graph, node: fx.Node) -> None:
    """Follow a token slice with .contiguous(). Behind a batch axis the slice is strided
    with a stride that depends on n, and torch 2.11's CPU bf16 matmul reads such sizes as
    plain ints, which fixes n to one value. A later matmul copies the slice anyway."""
    with graph.inserting_after(node):
        dense = graph.call_method("contiguous", (node,))
    node.replace_all_uses_with(dense, delete_user_cb=lambda user: user is not dense)


def token_shapes(gm: fx.GraphModule, plan: TokenPlan) -> fx.GraphModule:
    graph = gm.graph
    for edit in plan.literals:
        _rewrite_literal(graph, edit)
    gathered: dict = {}
    for table in plan.tables:
        key = (table.arg, table.dim, table.layout)
        if key not in gathered:
            rows = layout_rows(graph, table.layout)
            with graph.inserting_before(table.node):
                g = graph.call_function(torch.index_select, (table.arg, table.dim, rows))
            rename(g, f"{table.arg.name}_rows")
            g.meta[TABLE_GATHER] = True
            gathered[key] = g
        table.node.replace_input_with(table.arg, gathered[key])
    frame_of: dict = {}
    for edit in plan.frame_keys:
        _gather_frame_keys(graph, edit, frame_of)
    return gm
