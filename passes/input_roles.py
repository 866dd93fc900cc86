"""input_roles: which graph inputs are the model's hidden states, timestep and position ids.

The one place that maps dynamo's placeholders to model-level roles. Dynamo records where
each placeholder came from (`node.meta["grapharg"].source`): `L['kwargs']['timestep']` for a
keyword argument, `L['hidden_states']` for a positional one bound to its parameter name.
That name is matched against `ROLE_NAMES`; only when dynamo left no source (a graph built by
hand) is the placeholder's own name read (`l_kwargs_timestep_` -> `timestep`).

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
    if isinstance(index, str) and getattr(base, "local_name", None) == "kwargs" \
            and getattr(base, "base", None) is None:
        return index
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
