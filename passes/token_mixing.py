"""token_mixing: an op that mixes image tokens (a sum or a contraction over the token axis,
a convolution over the token grid; plan.MixingSite) cannot run on the active tokens
alone. Each token-holding operand is completed from a cache of every image token (a state
written in place at the active rows, as kv_cache does for attention's keys), the op runs on
all N tokens, and where its result holds image tokens the active ones are gathered back,
so the rest of the graph stays on n tokens.

Linear attention (Sana; k, v: ReLU key features and values padded with a ones channel):

    before                                    after
    v [B, H, D+1, N], k [B, H, N, D]          v [B, H, D+1, n], k [B, H, n, D]
                                              v_all = index_copy_(token_cache_0, 3, idx, v)  [B, H, D+1, N]
                                              k_all = index_copy_(token_cache_1, 2, idx, k)  [B, H, N, D]
    s = matmul(v, k)        [B, H, D+1, D]    s = matmul(v_all, k_all)                       [B, H, D+1, D]
    o = matmul(s, q)        [B, H, D+1, N]    o = matmul(s, q)   (q stays on n tokens)       [B, H, D+1, n]

A depthwise convolution over the grid (Sana's Mix-FFN; grid H x W, rewritten (n, 1)):

    x [B, C, H, W]                            x [B, C, n, 1]
                                              c = x.reshape(B, C, n)     (canonical: [others.., tokens])
                                              g = index_copy_(token_cache_2, 2, idx, c).reshape(B, C, H, W)
    y = conv2d(x, w, pad 1) [B, C, H, W]      y = conv2d(g, w, pad 1)                         [B, C, H, W]
                                              y_g = y.reshape(B, C, N).index_select(2, idx).reshape(B, C, n, 1)

Full steps write every row of the caches: a partial step then equals the full step on the
same input, as with cached keys and values. Grid tensors are moved to and from the cache's
canonical form [other factors.., tokens] by reshape and permute (passes/token_grid.py):
SanaVideo's [B*F, C, H, W] (frames folded into the batch) is [B, F, C, H, W] factor-wise.

Attention within groups folded into the batch (Latte: within each frame [B*F, H, S, D],
across frames at each position [B*S, H, F, D]) is such an op: q, k, v are completed, it runs
on every row, and the active rows of its result are gathered back. Tables without tokens that
vary along the grid (plan.GridTable: Latte's modulation per frame row [B*F, 1, C], per
position row [B*S, 1, C]) are gathered to the active tokens' rows:

    shift [B*F, 1, C]                         shift.expand(B*F, S, C) -> canonical [B, C, N]
                                              .index_select(2, idx) -> [B*n, 1, C]
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from .nodes import rename, value
from .plan import GridTable, MixingSite, TokenAxis, TokenGrid, TokenPlan
from .signature import Role, declare_state, declared_input, write_state
from .token_grid import canonical_order, other_sizes
from .token_inputs import grid_axis_length, layout_rows, num_active


def token_mixing(gm: fx.GraphModule, plan: TokenPlan) -> fx.GraphModule:
    graph = gm.graph
    completed: dict = {}      # operand -> its tensor on every token
    gathered: dict = {}       # full result of a mixing op -> its active tokens
    caches = 0
    tables: dict = {}
    for table in plan.grid_tables:
        key = (table.arg, table.grid)
        if key not in tables:
            with graph.inserting_before(table.node):
                tables[key] = _gather_table(graph, table)
        table.node.replace_input_with(table.arg, tables[key])
    for site in plan.mixing:
        for operand in site.operands:
            if operand.arg not in completed:
                with graph.inserting_before(site.node):
                    completed[operand.arg] = _complete(graph, operand.arg, operand.axis, caches)
                caches += 1
            site.node.replace_input_with(gathered.get(operand.arg, operand.arg), completed[operand.arg])
        if site.output is not None:
            # a later mixing op reads this result whole: no cache needed for it
            gathered[site.node] = _gather_output(graph, site)
            completed[site.node] = site.node
    return gm


def _complete(graph: fx.Graph, arg: fx.Node, axis, number: int) -> fx.Node:
    """`arg` on the gathered tokens -> the same tensor on all N tokens (its cache, with the
    gathered rows written in place). Insert under a `graph.inserting_*` context."""
    name = f"{Role.TOKEN_CACHE.value}_{number}"
    if isinstance(axis, TokenAxis):
        cache = declare_state(graph, name, Role.TOKEN_CACHE, value(arg), token_dim=axis.dim, layer=number)
        full = write_state(graph, cache, axis.dim, layout_rows(graph, axis.layout), arg)
    else:
        others = other_sizes(axis)
        example = value(arg).new_empty((*others, axis.layout.full_length))
        cache = declare_state(graph, name, Role.TOKEN_CACHE, example, token_dim=len(others), layer=number)
        rows = _to_canonical(graph, arg, axis, gathered=True)
        full = _from_canonical(graph, write_state(graph, cache, len(others), _index(graph), rows), axis,
                               gathered=False)
        # the op reads a dense tensor again, not a permuted view of the cache: attention with a
        # strided last axis is decomposed into matmuls (no flash kernel), which Inductor's
        # attention patterns then fuse back assuming another permutation (wrong shapes: Latte)
        full = graph.call_method("contiguous", (full,))
    rename(full, f"{arg.name}_all_tokens")
    return full


def _gather_output(graph: fx.Graph, site: MixingSite) -> fx.Node:
    """Replace the uses of the op's full result by its active tokens (on the gathered grid)."""
    node, grid = site.node, site.output
    users = set(node.users)
    with graph.inserting_before(node.next):
        full = _to_canonical(graph, node, grid, gathered=False)
        rows = graph.call_function(torch.index_select, (full, len(other_sizes(grid)), _index(graph)))
        gathered = _from_canonical(graph, rows, grid, gathered=True)
    rename(gathered, f"{node.name}_active_tokens")
    for user in users:
        user.replace_input_with(node, gathered)
    return gathered


def _gather_table(graph: fx.Graph, table: GridTable) -> fx.Node:
    """A table without image tokens that varies along axes holding the grid ([B*F, 1, C] on
    [B*F, S, C]) -> its rows of the gathered tokens ([B*n, 1, C]): expanded to the full grid,
    brought to canonical form, index_select of the active tokens, back to the gathered grid.
    Insert under a `graph.inserting_*` context."""
    full = _shape(graph, table.grid, gathered=False)
    v = value(table.arg)
    x = table.arg
    if v.dim() < len(full):
        x = graph.call_method("reshape", (x, (1,) * (len(full) - v.dim()) + tuple(v.shape)))
    x = graph.call_method("expand", (x, full))
    rows = graph.call_function(torch.index_select, (_to_canonical(graph, x, table.grid, gathered=False),
                                                    len(other_sizes(table.grid)), _index(graph)))
    gathered = _from_canonical(graph, rows, table.grid, gathered=True)
    rename(gathered, f"{table.arg.name}_token_rows")
    return gathered


# --------------------------------------------------------------------------- canonical form
def _index(graph: fx.Graph) -> fx.Node:
    return declared_input(graph, Role.ACTIVE_INDEX)


def _factor_size(graph: fx.Graph, factor, gathered: bool):
    """Size of one factor: grid axis 0 holds the n gathered tokens, the other grid axes 1."""
    if factor.axis is None or not gathered:
        return factor.size
    return num_active(graph) if factor.axis == 0 else 1


def _shape(graph: fx.Graph, grid: TokenGrid, gathered: bool) -> tuple:
    """The sizes of the axes of a tensor laid out as `grid`."""
    if not gathered:
        return tuple(math.prod(f.size for f in factors) for factors in grid.dims)
    return tuple(grid_axis_length(graph, math.prod(f.size for f in factors if f.axis is None),
                                  any(f.axis == 0 for f in factors)) for factors in grid.dims)


def _to_canonical(graph: fx.Graph, x: fx.Node, grid: TokenGrid, gathered: bool) -> fx.Node:
    """x laid out as `grid` -> [other factors.., tokens] (n gathered or N tokens)."""
    factors, order = canonical_order(grid)
    split = graph.call_method("reshape", (x, tuple(_factor_size(graph, f, gathered) for f in factors)))
    moved = graph.call_method("permute", (split, tuple(order)))
    tokens = num_active(graph) if gathered else grid.layout.full_length
    return graph.call_method("reshape", (moved, (*other_sizes(grid), tokens)))


def _from_canonical(graph: fx.Graph, rows: fx.Node, grid: TokenGrid, gathered: bool) -> fx.Node:
    """[other factors.., tokens] -> laid out as `grid` (gathered: grid axis 0 holds the n
    tokens, the other grid axes 1)."""
    factors, order = canonical_order(grid)
    ordered = [factors[i] for i in order]
    split = graph.call_method("reshape", (rows, tuple(_factor_size(graph, f, gathered) for f in ordered)))
    inverse = sorted(range(len(order)), key=order.__getitem__)
    moved = graph.call_method("permute", (split, tuple(inverse)))
    return graph.call_method("reshape", (moved, _shape(graph, grid, gathered)))
