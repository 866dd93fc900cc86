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

Entry and exit with groups folded into the batch (Latte's frames: plan.folded, rows b*G + g,
token g*S + s) pass through [B, N, C] around the gather and the scatter:

    h   [B*G, S, C]   h_g = index_select(h.reshape(B, N, C), 1, idx).reshape(B*n, 1, C)
    out [B*n, 1, C]   full = index_copy(out_cache, 1, idx, out.reshape(B, n, C)).reshape(B*G, S, C)
"""
from __future__ import annotations

import torch
import torch.fx as fx

from .nodes import rename, value
from .plan import TokenPlan
from .signature import ENTRY_GATHER, EXIT_SCATTER, Role, declare_state, write_state
from .token_inputs import active_index, grid_axis_length, num_active


def gather_scatter(gm: fx.GraphModule, plan: TokenPlan) -> fx.GraphModule:
    graph = gm.graph
    entry_val, exit_val = value(plan.entry), value(plan.exit)
    idx = active_index(graph, entry_val.device)
    batch, n_img = exit_val.shape[0], plan.num_image_tokens
    if plan.folded is not None:
        batch = exit_val.shape[0] * exit_val.shape[1] // n_img
        exit_val = exit_val.new_empty((batch, n_img, exit_val.shape[2]))
    cache = declare_state(graph, Role.OUT_CACHE.value, Role.OUT_CACHE, exit_val, token_dim=1)

    anchor = plan.entry if plan.entry.op != "placeholder" else idx
    with graph.inserting_before(anchor.next):     # in order
        tokens = plan.entry
        if plan.folded is not None:
            tokens = graph.call_method("reshape", (plan.entry, (batch, n_img, entry_val.shape[2])))
        gathered = graph.call_function(torch.index_select, (tokens, plan.entry_dim, idx))
        result = gathered
        if plan.folded is not None:
            result = graph.call_method("reshape", (gathered, (grid_axis_length(graph, batch, True), 1,
                                                              entry_val.shape[2])))
    rename(gathered, "gathered_" + plan.entry.name)
    gathered.meta[ENTRY_GATHER] = True
    plan.entry.replace_all_uses_with(result, delete_user_cb=lambda u: u is not tokens and u is not gathered)

    with graph.inserting_before(plan.exit.next):
        fresh = plan.exit
        if plan.folded is not None:
            fresh = graph.call_method("reshape", (plan.exit, (batch, num_active(graph), exit_val.shape[2])))
        full = graph.call_function(torch.index_copy, (cache, 1, idx, fresh))
        result = full
        if plan.folded is not None:
            result = graph.call_method("reshape", (full, tuple(value(plan.exit).shape)))
    rename(full, "scattered_" + plan.exit.name)
    full.meta[EXIT_SCATTER] = True
    plan.exit.replace_all_uses_with(result, delete_user_cb=lambda u: u is not fresh and u is not full)
    with graph.inserting_after(result):
        write_state(graph, cache, 1, idx, fresh)
    return gm
