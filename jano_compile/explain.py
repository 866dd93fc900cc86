"""`jano_compile.explain(model, *args, **kwargs)`: what the backend would do, without lowering."""
from __future__ import annotations

import inspect

import torch

from .report import Report
from .rewrite import rewrite_graph


def _by_name(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """The call's inputs by the forward's parameter names (through diffusers' wrapper, to the
    forward it wraps), so that each graph input is named as the model's own compile names
    it; positional inputs a forward takes as `*args` cannot be named: an error."""
    signature = inspect.signature(module.forward)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"explain(): these inputs do not fit {type(module).__name__}.forward{signature}: {e}") from e
    named = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise TypeError(f"explain(): {type(module).__name__}.forward takes {name!r} positionally only; "
                            "explain() passes inputs by name")
        else:
            named[name] = value
    return named


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

    def call(**kwargs):
        # dynamo keeps what it compiles on the code it starts from: here this function's
        # own, dropped below, and not the model's forward, whose code diffusers shares
        # between ~30 classes (a wrapper), where each explain() would count towards the
        # recompile limit of every later torch.compile of those models (a forward with
        # graph breaks still leaves its resumed pieces' entries behind)
        return module(**kwargs)

    try:
        with torch.no_grad():
            torch.compile(call, backend=capture, dynamic=False)(**_by_name(module, args, kwargs))
    finally:
        torch._dynamo.reset_code(call.__code__)
    if not reports:
        raise RuntimeError(f"explain(): dynamo captured no graph of {type(module).__name__}: it ran the "
                           "model eagerly, as it does for code it stopped compiling (after "
                           "torch._dynamo.config.recompile_limit compiles of one function); "
                           "torch._dynamo.reset() starts afresh")
    return Report(reports)
