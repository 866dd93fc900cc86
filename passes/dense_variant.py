"""dense_variant: the rewritten graph specialised to a step that computes every image token
and whose K/V caches no later step reads (the next computed step is full again, as in the
forecast recipe). No gather at the entry, attention on fresh K/V, no cache writes; the
history (or output cache) is renewed as in the rewritten graph. Same signature: the K/V
caches come back unchanged, so the runtime swaps callables, not calling conventions.

    rewritten graph (all tokens)                   dense variant (index = arange(N) only)
    h_g = index_select(h, 1, idx)                  h_g = h
    k_all = index_copy(k_cache_0, 2, rows, k)      attention(q, k, v)
    o = attention(q, k_all, v_all)                 ...
    full = index_copy(pred, 1, idx, out)           full = out
    return (y, k_all, v_all, ..., history')        return (y, k_cache_0, v_cache_0, ..., history')

Only valid when `active_index` holds every token in order: the runtime calls it so, and
lowers it with that static length.
"""
from __future__ import annotations

import copy

import torch.fx as fx

from .signature import ENTRY_GATHER, EXIT_SCATTER, ROLE, STATE_OUTPUTS, Role, output_node, placeholders


def dense_variant(gm: fx.GraphModule) -> fx.GraphModule:
    dense = copy.deepcopy(gm)
    graph = dense.graph
    by_name = {n.name: n for n in placeholders(graph)}
    out = output_node(graph)
    names = out.meta[STATE_OUTPUTS]
    first_state = len(out.args[0]) - len(names)
    for position, name in enumerate(names):
        state = by_name[name]
        if state.meta[ROLE] not in (Role.K_CACHE, Role.V_CACHE):
            continue
        results = list(out.args[0])
        filled = results[first_state + position]       # index_copy(cache, dim, rows, fresh)
        filled.replace_all_uses_with(filled.args[3], delete_user_cb=lambda user: user is not out)
        results[first_state + position] = state        # the cache comes back as it was
        out.args = (tuple(results),)
    for node in list(graph.nodes):
        if node.meta.get(ENTRY_GATHER):
            node.replace_all_uses_with(node.args[0])
        elif node.meta.get(EXIT_SCATTER):
            node.replace_all_uses_with(node.args[3])
    graph.eliminate_dead_code()
    graph.lint()
    dense.recompile()
    return dense
