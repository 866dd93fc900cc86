"""skip_tail: the graph a step runs when it computes no image token at all: the output the
exit would scatter into (the forecast, or the held cache), passed through what the model
does after its exit (SD3's unpatchify, ...), without the transformer blocks.

    rewritten graph                              tail (same inputs and outputs; no state written)
    pred = forecast_output(t, hs, Ts)            pred = forecast_output(t, hs, Ts)
    full = index_copy(pred.to(bf16), 1, idx, o)  full = pred.to(bf16)
    index_copy_(h0, 1, idx, o) ...
    y    = reshape(full, (B, 8, 8, ...))         y    = reshape(full, (B, 8, 8, ...))
    return (y,)                                  return (y,)

A held output cache is cloned: the user never receives a view of a state.

Writes in place into tensors the model made itself (Wan's RoPE table, `t[...] = x`) go
with the blocks that read them (`_eliminate_dead_code`). Raises Unrewritable when what
remains still computes more than that (an output that depends on the blocks other than
through the exit), so such a model never skips a step.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef

from .nodes import written
from .plan import Unrewritable
from .signature import EXIT_SCATTER, ROLE, Role, declared_input, state_writes


def skip_tail(gm: fx.GraphModule) -> fx.GraphModule:
    """The tail graph of a rewritten `gm` (see the module docstring)."""
    tail = copy.deepcopy(gm)
    graph = tail.graph
    for write in state_writes(graph):
        write.replace_all_uses_with(write.args[0])
        graph.erase_node(write)
    scatter = next(n for n in graph.nodes if n.meta.get(EXIT_SCATTER))
    before = scatter.args[0]
    if before.op == "placeholder":
        with graph.inserting_before(scatter):
            before = graph.call_method("clone", (before,))
    scatter.replace_all_uses_with(before)
    graph.erase_node(scatter)
    _eliminate_dead_code(graph)
    index = declared_input(graph, Role.ACTIVE_INDEX)
    if index.users:
        heavy = sorted(u.name for u in index.users)
        raise Unrewritable(f"no tail: the outputs still depend on the computed tokens ({heavy}); "
                           "such steps run the model on no image token, reading the caches")
    graph.lint()
    tail.recompile()
    return tail


def _storage(node: fx.Node):
    """The storage of `node`'s value as dynamo traced it (views share their base's), or None
    (a node jano added: its value was made apart from its inputs')."""
    value = node.meta.get("example_value")
    if not isinstance(value, torch.Tensor):
        return None
    try:
        return StorageWeakRef(value.untyped_storage())
    except (RuntimeError, NotImplementedError):
        return None


def _eliminate_dead_code(graph: fx.Graph) -> None:
    """Dead-code elimination that also drops writes in place (`t[...] = x`, `t.copy_(x)`,
    `nodes.written`) into storage nothing live reads: once the blocks' outputs are dead, so
    are the RoPE tables Wan and CogView4 write into tensors of their own, and the blocks'
    work feeding them. A write is kept when its target's storage is unknown, an input's, or
    read by a live node (FX's own pass drops an unused `t.copy_(x)` whoever reads `t`)."""
    # the model's inputs and attributes (the placeholders jano added carry example values
    # made from the nodes they cache, so their storage says nothing)
    external = {_storage(n) for n in graph.nodes
                if n.op in ("placeholder", "get_attr") and ROLE not in n.meta} - {None}
    local_writes: dict = {}
    kept = []                   # writes into an input's storage, or one not known
    for node in graph.nodes:
        target = written(node)
        if target is None:
            continue
        key = _storage(target)
        if key is None or key in external or target.op in ("placeholder", "get_attr"):
            kept.append(node)
        else:
            local_writes.setdefault(key, []).append(node)
    droppable = {w for writes in local_writes.values() for w in writes}
    live = set()
    pending = kept + [n for n in graph.nodes if n.op == "output" or (n.is_impure() and n not in droppable)]
    while pending:
        node = pending.pop()
        if node in live:
            continue
        live.add(node)
        pending.extend(node.all_input_nodes)
        if node.op not in ("placeholder", "get_attr"):      # their writes are never dropped
            pending.extend(local_writes.pop(_storage(node), ()))    # what it reads was written there
    for node in reversed(list(graph.nodes)):
        if node not in live:
            graph.erase_node(node)
