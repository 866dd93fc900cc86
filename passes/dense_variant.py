"""dense_variant: the rewritten graph specialised to a step that computes every image token,
for a static shape (no gather, no symbolic count); it still fills every cache. Same
signature: the runtime swaps callables, not calling conventions.

    rewritten graph (any n)                        full step (active_index = arange(N) only)
    h_g = index_select(h, 1, idx)                  h_g = h
    cos_rows = index_select(cos, 0, rows)          cos_rows = cos      (position tables)
    k_all = index_copy_(k_cache_0, 2, rows, k)     k_all = index_copy_(k_cache_0, 2, rows, k)   (every row)
    o = attention(q, k_all, v_all)                 o = attention(q, k_all, v_all)
    full = index_copy(pred, 1, idx, out)           full = out
    (kv_forecast) k_all = index_copy(pred_k, ..)   k_all = the filled k_cache_0;  k_prev, kv_time written whole
    index_copy_(h0, 1, idx, out) ...               index_copy_(h0, 1, idx, out) ... (as before)

The cache writes stay as they are and attention reads the cache it filled: Inductor then
writes the new K/V straight into the cache, in the cache's layout, inside the kernel that
makes them, and attention reads them there, as in a partial step. Attending to the fresh
K/V and copying them into the cache beside it writes them twice (Inductor's count of bytes
accessed, a 2 + 4 block FLUX on a CPU: the full step 1.10x plain that way, 1.07x this
way). A full step always fills the caches, even when no later step reads them: that costs
it the one write of K and V (no difference measurable on a CPU) and spares a second
full-step graph, its compile and its capture.

The token caches of token-mixing ops (passes/token_mixing.py) and kv_forecast's previous
K/V and their times are completion states like K/V: written whole, the same way
(signature.COMPLETION_ROLES). Only valid when `active_index` holds every token in order:
the runtime calls it so, and lowers it with that static length.
"""
from __future__ import annotations

import copy

import torch.fx as fx

from .kv_forecast import KV_COMPLETE
from .nodes import written
from .signature import (COMPLETION_ROLES, ENTRY_GATHER, EXIT_SCATTER, ROLE, TABLE_GATHER, placeholders,
                        state_writes)


def _impure(node: fx.Node) -> bool:
    """FX's own rule, plus writes in place (`x.copy_(y)`, `t.add_(u)`, `inplace=True`): a
    model may fill a buffer that way (CogVideoX builds its position table so away from its
    sample size), and FX counts an unused `copy_` as dead."""
    return node.is_impure() or written(node) is not None


def dense_variant(gm: fx.GraphModule) -> fx.GraphModule:
    dense = copy.deepcopy(gm)
    graph = dense.graph
    completion = {n.name for n in placeholders(graph) if n.meta.get(ROLE) in COMPLETION_ROLES}
    # fresh value -> its write into a completion state (kv_forecast's readers read that)
    filled = {w.args[3]: w for w in state_writes(graph) if w.args[0].name in completion}
    for node in list(graph.nodes):
        if node.meta.get(ENTRY_GATHER) or node.meta.get(TABLE_GATHER):   # every row, in order
            node.replace_all_uses_with(node.args[0])
        elif node.meta.get(KV_COMPLETE):      # every row fresh: read the filled cache
            node.replace_all_uses_with(filled.get(node.args[3], node.args[3]))
        elif node.meta.get(EXIT_SCATTER):
            node.replace_all_uses_with(node.args[3])
    graph.eliminate_dead_code(is_impure_node=_impure)
    graph.lint()
    dense.recompile()
    return dense
