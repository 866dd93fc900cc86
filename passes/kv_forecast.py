"""kv_forecast: the keys and values of the tokens a step does not compute are extrapolated
to the step time (order 1, over each row's own last two computation times), not held.
Runs after kv_cache and forecast (which declares the step time).

    before (kv_cache)                            after (layer i; R rows of the key sequence)
    k_all = index_copy_(k_cache_i, 2, rows, k)   pred = extrapolate_rows(k_cache_i, k_prev_i, T0_i, T1_i, t, 2)
    o = sdpa(q, k_all, v_all)                    index_copy_(k_prev_i, 2, rows, k_cache_i[:, :, rows])
                                                 index_copy_(k_cache_i, 2, rows, k)       (as before)
                                                 k_all = index_copy(pred, 2, rows, k)      [B, H, R, D]
                                                 (v alike; then T1_i[rows] = T0_i[rows], T0_i[rows] = t)
                                                 o = sdpa(q, k_all, v_all)

A row's times are NaN until it was computed (a new generation resets them); a row computed
once, or twice at one time, is held. The computed rows (text rows included) always read
their fresh values. Memory: one more K/V copy per layer (`k_prev`, `v_prev`, the model's
dtype) and two fp32 time vectors per layer; the extrapolation reads both copies in fp32.
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from .forecast import write_shifted_times
from .nodes import value
from .plan import TokenPlan
from .signature import ROLE, STATE, Role, declare_state, declared_input, placeholders, state_writes, write_state

KV_COMPLETE = "jano_kv_complete"    # node.meta: the completed K/V an attention reads (index_copy of a forecast)
_KV_ROLES = (Role.K_CACHE, Role.V_CACHE)


def extrapolate_rows(cache: torch.Tensor, prev: torch.Tensor, time0: torch.Tensor, time1: torch.Tensor,
                     step_time: torch.Tensor, dim: int) -> torch.Tensor:
    """cache + (cache - prev) * (t - T0) / (T0 - T1) per row along `dim` (cache, prev: the
    last two computed values, any shape; time0, time1 [R] fp32 their times; step_time []),
    computed in fp32, returned in the cache's dtype; rows without two distinct times held."""
    valid = torch.isfinite(time0) & torch.isfinite(time1) & (time0 != time1)
    span = torch.where(valid, time0 - time1, torch.ones_like(time0))
    factor = torch.where(valid, (step_time - time0) / span, torch.zeros_like(time0))
    shape = [1] * cache.dim()
    shape[dim] = -1
    last = cache.float()
    return (last + (last - prev.float()) * factor.view(shape)).to(cache.dtype)


def kv_forecast(gm: fx.GraphModule, plan: TokenPlan) -> fx.GraphModule:
    graph = gm.graph
    step_time = declared_input(graph, Role.STEP_TIME)
    if step_time is None:
        raise ValueError("kv_forecast runs after forecast, which declares the step time")
    caches = {n.name for n in placeholders(graph) if n.meta.get(ROLE) in _KV_ROLES}
    by_layer: dict = {}
    for write in state_writes(graph):
        if write.args[0].name in caches:
            by_layer.setdefault(write.args[0].meta[STATE][0], []).append(write)
    position = {node: i for i, node in enumerate(graph.nodes)}     # of the attentions, which stay
    for layer, writes in by_layer.items():
        _forecast_layer(graph, layer, writes, step_time, position)
    return gm


def _forecast_layer(graph: fx.Graph, layer: int, writes: list, step_time: fx.Node, position: dict) -> None:
    """Forecast the K/V caches that `writes` (their in-place writes, in graph order) fill;
    `position`: the graph order of the nodes before the pass (the attentions reading them)."""
    cache, dim, rows, _ = writes[0].args
    length = value(cache).shape[dim]
    times = [declare_state(graph, f"kv_time_{j}_{layer}", Role.KV_TIME,
                           value(cache).new_empty((length,), dtype=torch.float32),
                           token_dim=0, layer=layer, reset_value=math.nan) for j in range(2)]
    completed = []
    for write in writes:
        cache, dim, rows, fresh = write.args
        prev = declare_state(graph, f"{cache.name}_prev", Role.KV_PREV, value(cache), token_dim=dim, layer=layer)
        with graph.inserting_before(write):
            pred = graph.call_function(extrapolate_rows, (cache, prev, times[0], times[1], step_time, dim))
            old = graph.call_function(torch.index_select, (cache, dim, rows))
            write_state(graph, prev, dim, rows, old)
        with graph.inserting_after(write):
            full = graph.call_function(torch.index_copy, (pred, dim, rows, fresh))
        full.meta[KV_COMPLETE] = True
        write.replace_all_uses_with(full)
        completed.append(full)
    readers = [user for full in completed for user in full.users]
    first_reader = min(readers, key=position.__getitem__) if readers else completed[-1].next
    with graph.inserting_before(first_reader):
        write_shifted_times(graph, rows, step_time, times)

