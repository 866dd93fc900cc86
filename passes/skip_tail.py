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

Raises Unrewritable when what remains still computes more than that (an output that
depends on the blocks other than through the exit), so such a model never skips a step.
"""
from __future__ import annotations

import copy

import torch.fx as fx

from .plan import Unrewritable
from .signature import EXIT_SCATTER, Role, declared_input, state_writes


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
    graph.eliminate_dead_code()
    index = declared_input(graph, Role.ACTIVE_INDEX)
    if index.users:
        heavy = sorted(u.name for u in index.users)
        raise Unrewritable(f"no tail: the outputs still depend on the computed tokens ({heavy}); "
                           "such steps run the model on no image token, reading the caches")
    graph.lint()
    tail.recompile()
    return tail
