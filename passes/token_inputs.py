"""The graph nodes every rewriting pass shares: the `active_index` input and what derives
from it (gathered lengths, per-layout row indices). Each is created once, found by name.

    active_index : [n] int64 positions among the N image tokens (a graph input)
    n            : active_index.size(0), symbolic under Inductor
    rows[layout] : [T + n] rows of a joint sequence, e.g. [text 7 | image 64] ->
                   cat(arange(0, 7), active_index + 7)
    grid axes    : gathered sizes of axes holding the token grid, e.g. B*F -> B*n
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .nodes import rename
from .plan import IMAGE, Layout
from .signature import Role, declare_index, declared_input, placeholders


#: node.meta key: which shared node this is ("num_active", "rows_text7_image64", ...)
SHARED = "jano_shared"


def _find(graph: fx.Graph, key: str):
    return next((n for n in graph.nodes if n.meta.get(SHARED) == key), None)


def _share(node: fx.Node, key: str) -> fx.Node:
    """Tag `node` as the shared node `key`, and name it so in the generated code."""
    node.meta[SHARED] = key
    return rename(node, key)


def _after(graph: fx.Graph, *inputs):
    """Insertion point right after the last of `inputs` (after the placeholders if none)."""
    wanted = {a for a in inputs if isinstance(a, fx.Node)}
    anchor = placeholders(graph)[-1]
    for n in graph.nodes:
        if n in wanted:
            anchor = n
    return graph.inserting_after(anchor)


def active_index(graph: fx.Graph, device: torch.device) -> fx.Node:
    """The `active_index` input, declared on first use."""
    return declared_input(graph, Role.ACTIVE_INDEX) or declare_index(graph, device)


def num_active(graph: fx.Graph) -> fx.Node:
    node = _find(graph, "num_active")
    if node is None:
        idx = declared_input(graph, Role.ACTIVE_INDEX)
        with _after(graph, idx):
            node = _share(graph.call_method("size", (idx, 0)), "num_active")
    return node


def _n_with(graph: fx.Graph, op, const: int, label: str) -> fx.Node:
    """Node for op(n, const), created once (named num_active_{label}_{const})."""
    n = num_active(graph)
    name = f"num_active_{label}_{const}"
    node = _find(graph, name)
    if node is None:
        with _after(graph, n):
            node = _share(graph.call_function(op, (n, const)), name)
    return node


def _n_plus(graph: fx.Graph, const: int):
    """Node for n + const (n itself when const is 0)."""
    return num_active(graph) if const == 0 else _n_with(graph, operator.add, const, "plus")


def _gathered_offset(graph: fx.Graph, layout: Layout, k: int):
    """Start of segment k on the gathered axis: an int, or a node when image tokens precede."""
    const = sum(s.size for s in layout.segments[:k] if s.kind != IMAGE)
    if all(s.kind != IMAGE for s in layout.segments[:k]):
        return const
    return _n_plus(graph, const)


def gathered_length(graph: fx.Graph, layout: Layout):
    """Expression (node) for the gathered length of `layout`: text length + n."""
    return _gathered_offset(graph, layout, len(layout.segments))


def segment_bounds(graph: fx.Graph, layout: Layout, k: int):
    """(start, stop) of segment k on the gathered axis; None for the open ends."""
    start = _gathered_offset(graph, layout, k)
    stop = None if k == len(layout.segments) - 1 else _gathered_offset(graph, layout, k + 1)
    return (None if isinstance(start, int) and start == 0 else start), stop


def layout_rows(graph: fx.Graph, layout: Layout) -> fx.Node:
    """[T + n] int64 rows of the full sequence that the gathered sequence holds."""
    idx = declared_input(graph, Role.ACTIVE_INDEX)
    if layout.is_image_only:
        return idx
    name = "rows_" + "_".join(f"{s.kind}{s.size}" for s in layout.segments)
    node = _find(graph, name)
    if node is not None:
        return node
    device = idx.meta["example_value"].device
    pieces = []
    for off, seg in zip(layout.offsets(), layout.segments):
        with _after(graph, idx, *pieces):
            if seg.kind == IMAGE:
                pieces.append(graph.call_function(operator.add, (idx, off)) if off else idx)
            else:
                pieces.append(graph.call_function(
                    torch.arange, (off, off + seg.size), {"dtype": torch.long, "device": device}))
    with _after(graph, idx, *pieces):
        node = _share(graph.call_function(torch.cat, (pieces,), {"dim": 0}), name)
    return node


def grid_axis_length(graph: fx.Graph, other: int, carries_tokens: bool):
    """Gathered length of an axis holding grid factors (plan.GridShape): `other` (the product
    of its other factors) times n where it holds grid axis 0, else `other`."""
    if not carries_tokens:
        return other
    return num_active(graph) if other == 1 else _n_with(graph, operator.mul, other, "times")
