"""dense_variant: the rewritten graph specialised to a step that computes every image token,
for a static shape (no gather, no symbolic count). Same signature: the runtime swaps
callables, not calling conventions.

    rewritten graph (any n)                        full step (active_index = arange(N) only)
    h_g = index_select(h, 1, idx)                  h_g = h
    k_all = index_copy_(k_cache_0, 2, rows, k)     k_all = index_copy_(k_cache_0, 2, rows, k)  (fill_caches=True)
                                                   k_all = k                                   (fill_caches=False)
    o = attention(q, k_all, v_all)                 o = attention(q, k_all, v_all)
    full = index_copy(pred, 1, idx, out)           full = out
    (kv_forecast) k_all = index_copy(pred_k, ..)   k_all = the filled cache (or k);  k_prev, kv_time written whole (or left)
    index_copy_(h0, 1, idx, out) ...               index_copy_(h0, 1, idx, out) ... (as before)

With `fill_caches` the writes stay as they are (rows = every row) and attention reads the
cache it filled: Inductor then writes the new K/V straight into the cache, in the cache's
layout, inside the kernel that makes them, and attention reads them there, as in a
partial step. Attending to the fresh K/V and copying them into the cache beside it writes
them twice (Inductor's count of bytes accessed, a 1 + 2 block FLUX on a CPU: the full step
12% above plain that way, 9% this way).

The token caches of token-mixing ops (passes/token_mixing.py) and kv_forecast's previous
K/V and their times are completion states like K/V: written whole or left as they are, the
same way (signature.COMPLETION_ROLES).

`fill_caches=False` suits a full step whose K/V caches no later step reads (the next
computed step is full again, as in the forecast recipe): the caches stay as they were.
Only valid when `active_index` holds every token in order: the runtime calls it so, and
lowers it with that static length.
"""
from __future__ import annotations

import copy

import torch.fx as fx

from .kv_forecast import KV_COMPLETE
from .signature import COMPLETION_ROLES, ENTRY_GATHER, EXIT_SCATTER, ROLE, placeholders, state_writes


def dense_variant(gm: fx.GraphModule, fill_caches: bool = False) -> fx.GraphModule:
    dense = copy.deepcopy(gm)
    graph = dense.graph
    kv = {n.name for n in placeholders(graph) if n.meta.get(ROLE) in COMPLETION_ROLES}
    filled = {}     # fresh value -> the write of it into its completion state (fill_caches)
    for write in state_writes(graph):
        if write.args[0].name not in kv:
            continue
        if fill_caches:
            filled[write.args[3]] = write
        else:
            write.replace_all_uses_with(write.args[3])
            graph.erase_node(write)
    for node in list(graph.nodes):
        if node.meta.get(ENTRY_GATHER):
            node.replace_all_uses_with(node.args[0])
        elif node.meta.get(KV_COMPLETE):      # every row fresh: read the filled cache, or the fresh rows
            node.replace_all_uses_with(filled.get(node.args[3], node.args[3]))
        elif node.meta.get(EXIT_SCATTER):
            node.replace_all_uses_with(node.args[3])
    graph.eliminate_dead_code()
    graph.lint()
    dense.recompile()
    return dense
