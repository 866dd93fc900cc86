"""input_roles: which graph inputs are the model's hidden states, timestep and position ids.

The one place that maps dynamo's placeholders to model-level roles. Dynamo records where
each placeholder came from (`node.meta["grapharg"].source`): `L['kwargs']['timestep']` for a
keyword argument, `L['hidden_states']` for a positional one bound to its parameter name,
`L['args'][0]` for a positional one passed through a `*args` wrapper (diffusers wraps the
forward of FLUX, SD3, Wan, Sana and ~25 more in `apply_lora_scale(self, *args, **kwargs)`;
Sana's pipelines pass the latent positionally), named by `POSITIONAL_NAMES`. That name is
matched against `ROLE_NAMES`; only when dynamo left no source (a graph built by hand) is
the placeholder's own name read (`l_kwargs_timestep_` -> `timestep`).

    roles = input_roles(gm)
    roles.hidden_states   # position among the placeholders, or None
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Optional

import torch.fx as fx

from .nodes import placeholders

#: Argument names per role, first match wins. Data: a family that names its inputs
#: otherwise is one more alias here.
ROLE_NAMES = MappingProxyType({
    "hidden_states": ("hidden_states", "x"),
    "timestep": ("timestep", "timesteps", "t"),
    "position_ids": ("img_ids", "position_ids"),
})

#: The names of positional arguments that reach the graph through a `*args` wrapper, by
#: position: every diffusers transformer takes its latent first; later positions differ
#: from family to family and stay unnamed.
POSITIONAL_NAMES = ("hidden_states",)


@dataclass(frozen=True)
class InputRoles:
    """Placeholder positions of the inputs the runtime reads; None where absent."""
    hidden_states: Optional[int] = None
    timestep: Optional[int] = None
    position_ids: Optional[int] = None


def argument_name(node: fx.Node) -> Optional[str]:
    """The model argument a placeholder holds (`timestep`), or None for anything nested
    deeper (a parameter, an element of a list argument, an attribute)."""
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    if source is None:
        return re.sub(r"^l_(kwargs_)?|_$", "", node.name)
    base = getattr(source, "base", None)
    index = getattr(source, "index", None)
    wrapper_argument = getattr(base, "local_name", None) if getattr(base, "base", None) is None else None
    if wrapper_argument == "kwargs" and isinstance(index, str):
        return index
    if wrapper_argument == "args" and isinstance(index, int):
        return POSITIONAL_NAMES[index] if index < len(POSITIONAL_NAMES) else None
    local = getattr(source, "local_name", None)
    return local if isinstance(local, str) and base is None else None


def hidden_states_input(gm: fx.GraphModule) -> Optional[fx.Node]:
    """The placeholder that holds the model's `hidden_states`, or None."""
    position = input_roles(gm).hidden_states
    return None if position is None else placeholders(gm.graph)[position]


def input_roles(gm: fx.GraphModule) -> InputRoles:
    """Positions (among the placeholders) of the inputs in `ROLE_NAMES`."""
    names = [argument_name(n) for n in placeholders(gm.graph)]
    found = {}
    for role, aliases in ROLE_NAMES.items():
        found[role] = next((names.index(a) for a in aliases if a in names), None)
    return InputRoles(**found)
