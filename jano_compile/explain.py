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

    with torch.no_grad():
        torch.compile(module, backend=capture, dynamic=False)(*args, **kwargs)
    return Report(reports)
