"""forecast: a token that a step does not compute gets its output extrapolated from its
own computed history (Newton divided differences over that token's own step times), not
held at its last value. Runs after gather_scatter, whose output cache it replaces.

    before (gather_scatter)                     after (order 1; h_j [B, N, C] fp32, T_j [N] fp32)
    full = index_copy(out_cache, 1, idx, out)   pred = forecast_output(t, [h0, h1], [T0, T1])    [B, N, C]
                                                full = index_copy(pred.to(out.dtype), 1, idx, out)
                                                new  = shift_history(idx, t, out, [h0, h1], [T0, T1])
    outputs += (full,)   (renews out_cache)     outputs += (h0', h1', T0', T1')  (out_cache retired)

`t` is the step time (a graph input, never a constant). A token's slot j holds the output
it had j computations ago and the time of that computation; times are NaN until then (a
new generation resets them), and a term whose times are missing or equal is dropped, so a
token computed once is held.
"""
from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx

from .plan import TokenPlan
from .signature import (EXIT_SCATTER, Role, declare_state, declare_state_outputs, declare_step_time,
                        declared_input, retire_state)
from .token_layout import value

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


def shift_history(active_index: torch.Tensor, step_time: torch.Tensor, fresh: torch.Tensor,
                  history: list, history_time: list) -> tuple:
    """The slots after computing the tokens at `active_index` ([n]): each computed token's
    slot j takes its slot j - 1, slot 0 takes `fresh` [B, n, C] (as fp32) and `step_time`.
    Returns (*history', *history_time')."""
    k = len(history)
    new_history = [history[0].index_copy(1, active_index, fresh.to(history[0].dtype))]
    new_history += [history[j].index_copy(1, active_index, history[j - 1].index_select(1, active_index))
                    for j in range(1, k)]
    now = step_time.to(history_time[0].dtype).expand(active_index.shape[0])
    new_time = [history_time[0].index_copy(0, active_index, now)]
    new_time += [history_time[j].index_copy(0, active_index, history_time[j - 1].index_select(0, active_index))
                 for j in range(1, k)]
    return (*new_history, *new_time)


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
    history = [declare_state(graph, f"history_{j}", Role.HISTORY, exit_value.new_empty(
        (exit_value.shape[0], n, exit_value.shape[2]), dtype=torch.float32), token_dim=1)
        for j in range(order + 1)]
    history_time = [declare_state(graph, f"history_time_{j}", Role.HISTORY_TIME,
                                  exit_value.new_empty((n,), dtype=torch.float32), token_dim=0,
                                  reset_value=math.nan)
                    for j in range(order + 1)]
    with graph.inserting_before(scatter):
        pred = graph.call_function(forecast_output, (step_time, history, history_time))
        pred.name = "forecast"
        held = graph.call_method("to", (pred, exit_value.dtype))
    scatter.args = (held, dim, index, fresh)
    with graph.inserting_after(scatter):
        shifted = graph.call_function(shift_history, (index, step_time, fresh, history, history_time))
        shifted.name = "shifted_history"
    renewed = []
    with graph.inserting_after(shifted):
        for i, state in enumerate(history + history_time):
            item = graph.call_function(operator.getitem, (shifted, i))
            item.name = f"{state.name}_renewed"
            renewed.append((item, state))
    declare_state_outputs(graph, renewed)
    retire_state(graph, cache)
    return gm
