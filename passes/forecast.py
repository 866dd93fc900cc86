"""forecast: a token that a step does not compute gets its output extrapolated from its
own computed history (Newton divided differences over that token's own step times), not
held at its last value. Runs after gather_scatter, whose output cache it replaces.

    before (gather_scatter)                     after (order 1; h_j [B, N, C] fp32, T_j [N] fp32)
    full = index_copy(out_cache, 1, idx, out)   pred = forecast_output(t, [h0, h1], [T0, T1])    [B, N, C]
                                                full = index_copy(pred.to(out.dtype), 1, idx, out)
    index_copy_(out_cache, 1, idx, out)         index_copy_(h1, 1, idx, h0[:, idx])   (in place, oldest
                                                index_copy_(h0, 1, idx, out)           slot first; T_j alike)
                                                (out_cache retired)

`t` is the step time (a graph input, never a constant). A token's slot j holds the output
it had j computations ago and the time of that computation; times are NaN until then (a
new generation resets them), and a term whose times are missing or equal is dropped, so a
token computed once is held.

Each computed token also records how far its forecast was off, per unit of time since its
last computation (`forecast_error` [N] fp32, NaN until measured; batch rows and channels
averaged): what the schedule ranks regions by when it re-ranks them by measured error.
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from .nodes import rename, value
from .plan import TokenPlan
from .signature import (EXIT_SCATTER, Role, declare_state, declare_step_time, declared_input, retire_state,
                        write_state)

MAX_ORDER = 2


def forecast_output(step_time: torch.Tensor, history: list, history_time: list) -> torch.Tensor:
    """Newton forecast at `step_time` ([] fp32) of every token from its slots, most recent
    first: history[j] [B, N, C] fp32 with times history_time[j] [N]. Order = len - 1."""
    pred = history[0]
    differences = list(history)
    factor = torch.ones_like(history_time[0])
    valid = torch.isfinite(history_time[0])
    for order in range(1, len(history)):
        differences = [(differences[j] - differences[j + 1])
                       / (history_time[j] - history_time[j + order])[None, :, None]
                       for j in range(len(differences) - 1)]
        previous, current = history_time[order - 1], history_time[order]
        valid = valid & torch.isfinite(current) & (previous != current)
        factor = factor * (step_time - previous)
        term = differences[0] * factor[None, :, None]
        pred = pred + torch.where(valid[None, :, None], term, 0.0)
    return pred


def forecast_error_rate(step_time: torch.Tensor, pred_active: torch.Tensor, fresh: torch.Tensor,
                        last_time: torch.Tensor) -> torch.Tensor:
    """[n] fp32: mean over batch and channels of |fresh - forecast| of the computed tokens
    ([B, n, C] each), per unit of time since each one's last computation (`last_time` [n];
    NaN where it was never computed or the time did not move). Time may fall (a sigma
    clock: 1 -> 0) or rise (the step index): the horizon is its absolute change."""
    error = (fresh.to(pred_active.dtype) - pred_active).abs().mean(dim=(0, 2))
    horizon = (step_time - last_time).abs()
    return torch.where(horizon > 0, error / horizon, torch.full_like(error, math.nan))


def _shift_slots(graph: fx.Graph, slots: list, dim: int, index: fx.Node) -> None:
    """Emit the in-place writes that move, for the rows at `index` along `dim`, slot j - 1
    into slot j (oldest first, so each reads its neighbour before that is written)."""
    for j in range(len(slots) - 1, 0, -1):
        previous = graph.call_function(torch.index_select, (slots[j - 1], dim, index))
        write_state(graph, slots[j], dim, index, previous)


def write_shifted_history(graph: fx.Graph, active_index: fx.Node, step_time: fx.Node, fresh: fx.Node,
                          history: list, history_time: list) -> None:
    """Emit, at the graph's insertion point, the in-place writes that shift the slots of
    the tokens at `active_index` ([n]): slot j takes slot j - 1, slot 0 takes `fresh`
    [B, n, C] (as fp32) and `step_time`. Other tokens' slots are untouched."""
    _shift_slots(graph, history, 1, active_index)
    fresh32 = graph.call_method("to", (fresh, torch.float32))
    write_state(graph, history[0], 1, active_index, fresh32)
    write_shifted_times(graph, active_index, step_time, history_time)


def write_shifted_times(graph: fx.Graph, active_index: fx.Node, step_time: fx.Node, history_time: list) -> None:
    """Emit the in-place writes that shift the time slots [N] of the tokens at
    `active_index`: slot j takes slot j - 1 (oldest first), slot 0 takes `step_time`."""
    _shift_slots(graph, history_time, 0, active_index)
    now = graph.call_method("expand", (step_time, graph.call_method("size", (active_index, 0))))
    write_state(graph, history_time[0], 0, active_index, now)


def forecast(gm: fx.GraphModule, plan: TokenPlan, order: int = 1) -> fx.GraphModule:
    """Replace the held output cache by `order + 1` history slots and their forecast."""
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"forecast order must be in 1..{MAX_ORDER}, got {order}")
    graph = gm.graph
    cache = declared_input(graph, Role.OUT_CACHE)
    scatter = next(u for u in cache.users if u.meta.get(EXIT_SCATTER))
    _, dim, index, fresh = scatter.args
    exit_value = value(plan.exit)
    n = plan.num_image_tokens
    step_time = declare_step_time(graph, exit_value.device)
    held_shape = value(cache).shape       # [B, N, C] (the exit may fold groups into its batch)
    history = [declare_state(graph, f"history_{j}", Role.HISTORY, exit_value.new_empty(
        (held_shape[0], n, held_shape[2]), dtype=torch.float32), token_dim=1)
        for j in range(order + 1)]
    history_time = [declare_state(graph, f"history_time_{j}", Role.HISTORY_TIME,
                                  exit_value.new_empty((n,), dtype=torch.float32), token_dim=0,
                                  reset_value=math.nan)
                    for j in range(order + 1)]
    error = declare_state(graph, "forecast_error", Role.FORECAST_ERROR,
                          exit_value.new_empty((n,), dtype=torch.float32), token_dim=0, reset_value=math.nan)
    with graph.inserting_before(scatter):
        pred = graph.call_function(forecast_output, (step_time, history, history_time))
        rename(pred, "forecast")
        held = graph.call_method("to", (pred, exit_value.dtype))
        pred_active = graph.call_function(torch.index_select, (pred, 1, index))
        last_time = graph.call_function(torch.index_select, (history_time[0], 0, index))
        rate = graph.call_function(forecast_error_rate, (step_time, pred_active, fresh, last_time))
        write_state(graph, error, 0, index, rate)
    scatter.args = (held, dim, index, fresh)
    retire_state(graph, cache)
    with graph.inserting_before(scatter.next):      # in order, right after the scatter
        write_shifted_history(graph, index, step_time, fresh, history, history_time)
    return gm
