"""gather_scatter: select the active image tokens at the entry, scatter them over the
output cache (the last computed exit of every token) at the exit, and write them into it.
The entry's token axis is 1 ([B, N, C]) or 0 (sequence-first [N, B, C]); the exit's is 1.

    before                                   after
    h   = transpose(...)      [B, N, C]      h   = transpose(...)                       [B, N, C]
                                             h_g = index_select(h, 1, active_index)     [B, n, C]
    ... blocks on h ...                      ... blocks on h_g ...
    out = linear(x)           [B, N, C]      out = linear(x)                            [B, n, C]
                                             full = index_copy(out_cache, 1, active_index, out)
                                             index_copy_(out_cache, 1, active_index, out)  (in place)
    reshape(out, (B, 8, 8, ...))             reshape(full, (B, 8, 8, ...))   (full: [B, N, C])

`full` is a new tensor, not the cache: what the user receives never changes under a later
step's write.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from .plan import TokenPlan
from .signature import ENTRY_GATHER, EXIT_SCATTER, Role, declare_state, write_state
from .token_inputs import active_index
from .token_layout import value


def gather_scatter(gm: fx.GraphModule, plan: TokenPlan) -> fx.GraphModule:
    graph = gm.graph
    entry_val, exit_val = value(plan.entry), value(plan.exit)
    idx = active_index(graph, entry_val.device)
    cache = declare_state(graph, Role.OUT_CACHE.value, Role.OUT_CACHE, exit_val, token_dim=1)

    anchor = plan.entry if plan.entry.op != "placeholder" else idx
    with graph.inserting_after(anchor):
        gathered = graph.call_function(torch.index_select, (plan.entry, plan.entry_dim, idx))
    gathered.name = "gathered_" + plan.entry.name
    gathered.meta[ENTRY_GATHER] = True
    plan.entry.replace_all_uses_with(gathered, delete_user_cb=lambda u: u is not gathered)

    with graph.inserting_after(plan.exit):
        full = graph.call_function(torch.index_copy, (cache, 1, idx, plan.exit))
    full.name = "scattered_" + plan.exit.name
    full.meta[EXIT_SCATTER] = True
    plan.exit.replace_all_uses_with(full, delete_user_cb=lambda u: u is not full)
    with graph.inserting_after(full):
        write_state(graph, cache, 1, idx, plan.exit)
    return gm
