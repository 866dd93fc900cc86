"""skip_tail: the graph a step runs when it computes no image token at all: the output the
exit would scatter into (the forecast, or the held cache), passed through what the model
does after its exit (SD3's unpatchify, ...), without the transformer blocks.

    rewritten graph                              tail (same inputs; user outputs only)
    pred = forecast_output(t, hs, Ts)            pred = forecast_output(t, hs, Ts)
    full = index_copy(pred.to(bf16), 1, idx, o)  full = pred.to(bf16)
    y    = reshape(full, (B, 8, 8, ...))         y    = reshape(full, (B, 8, 8, ...))
    return (y, *renewed states)                  return (y,)

Raises Unrewritable when what remains still computes more than that (an output that
depends on the blocks other than through the exit), so such a model never skips a step.
"""
from __future__ import annotations

import copy

import torch.fx as fx

from .plan import Unrewritable
from .signature import EXIT_SCATTER, STATE_OUTPUTS, Role, declared_input, output_node


def skip_tail(gm: fx.GraphModule) -> fx.GraphModule:
    """The tail graph of a rewritten `gm` (see the module docstring)."""
    tail = copy.deepcopy(gm)
    graph = tail.graph
    out = output_node(graph)
    num_states = len(out.meta.get(STATE_OUTPUTS, []))
    results = list(out.args[0])
    out.args = (tuple(results[:len(results) - num_states]),)
    out.meta[STATE_OUTPUTS] = []
    scatter = next(n for n in graph.nodes if n.meta.get(EXIT_SCATTER))
    scatter.replace_all_uses_with(scatter.args[0])
    graph.erase_node(scatter)
    graph.eliminate_dead_code()
    index = declared_input(graph, Role.ACTIVE_INDEX)
    if index.users:
        heavy = sorted(u.name for u in index.users)
        raise Unrewritable(f"skip steps: the outputs still depend on the computed tokens ({heavy})")
    graph.lint()
    tail.recompile()
    return tail
