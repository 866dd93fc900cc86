"""`jano_compile.explain(model, *args, **kwargs)`: what the backend would do, without lowering."""
from __future__ import annotations

import torch

from .report import Report
from .rewrite import rewrite_graph


def explain(model: torch.nn.Module, *args, **kwargs) -> Report:
    """Capture `model(*args, **kwargs)` with dynamo, run the passes on each graph, and return
    the report (print it for a table). The model runs once, eagerly, under no_grad."""
    module = getattr(model, "_orig_mod", model)
    if not isinstance(module, torch.nn.Module):
        hint = (" (a pipeline: pass pipe.transformer and the transformer's own inputs)"
                if isinstance(getattr(module, "transformer", None), torch.nn.Module) else "")
        raise TypeError(f"explain() takes the transformer (an nn.Module) and its inputs, got "
                        f"{type(module).__name__}{hint}")
    if not args and not kwargs:
        raise TypeError("explain(model, *inputs, **inputs) runs the model once: give it the inputs of "
                        "one call (e.g. hidden_states=..., encoder_hidden_states=..., timestep=...)")
    reports = []

    def capture(gm, example_inputs):
        reports.append(rewrite_graph(gm, example_inputs).report)
        return gm.forward

    def call(*args, **kwargs):   # named as a `*args, **kwargs` forward wrapper's (input_roles)
        # dynamo keeps what it compiles on the code it starts from: here this function's
        # own, dropped below, and not the model's forward, whose code diffusers shares
        # between ~30 classes (a wrapper), where each explain() would count towards the
        # recompile limit of every later torch.compile of those models
        return module(*args, **kwargs)

    try:
        with torch.no_grad():
            torch.compile(call, backend=capture, dynamic=False)(*args, **kwargs)
    finally:
        torch._dynamo.reset_code(call.__code__)
    if not reports:
        raise RuntimeError(f"explain(): dynamo captured no graph of {type(module).__name__}: it ran the "
                           "model eagerly, as it does for code it stopped compiling (after "
                           "torch._dynamo.config.recompile_limit compiles of one function); "
                           "torch._dynamo.reset() starts afresh")
    return Report(reports)
