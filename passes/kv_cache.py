"""kv_cache: self/joint attention attends to every token: keys and values of the gathered
tokens are written into the layer's cache of the full sequence (in place), and attention
reads the whole cache. Cross-attention to text is left as it is.

    before                                      after (layer i, joint [text 7 | image 64])
    q, k, v                  [B, H, 71, D]      q, k, v                        [B, H, 7 + n, D]
                                                k_all = index_copy_(k_cache_i, 2, rows, k)  [B, H, 71, D]
                                                v_all = index_copy_(v_cache_i, 2, rows, v)  (in place)
    o = sdpa(q, k, v)        [B, H, 71, D]      o = sdpa(q, k_all, v_all)      [B, H, 7 + n, D]
"""
from __future__ import annotations

import torch.fx as fx

from .plan import TokenPlan
from .signature import Role, declare_state, write_state
from .token_inputs import layout_rows
from .token_layout import value


def kv_cache(gm: fx.GraphModule, plan: TokenPlan) -> fx.GraphModule:
    graph = gm.graph
    layer = 0
    for site in plan.attention:
        if site.kind != "self":
            continue
        rows = layout_rows(graph, site.key.layout)
        filled = {}
        for role, src in ((Role.K_CACHE, site.key_node), (Role.V_CACHE, site.value_node)):
            if src in filled:
                continue
            cache = declare_state(graph, f"{role.value}_{layer}", role, value(src),
                                  token_dim=site.key.dim, layer=layer)
            with graph.inserting_before(site.node):
                full = write_state(graph, cache, site.key.dim, rows, src)
            full.name = f"{role.value}_{layer}_filled"
            filled[src] = full
        site.node.args = tuple(filled.get(a, a) for a in site.node.args)
        site.node.kwargs = {k: filled.get(a, a) for k, a in site.node.kwargs.items()}
        layer += 1
    return gm
