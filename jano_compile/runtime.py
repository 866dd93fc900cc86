"""The callables the backend hands to dynamo. At each call they find the model's controller
through the parameters they receive (see registry.py) and let it run the graph."""
from __future__ import annotations

import re
import sys

import torch
import torch.fx as fx

from .controller import Controller
from .lowering import Lowered
from .registry import REGISTRY
from .report import GraphReport


NAMED_INPUTS = ("hidden_states", "timestep", "img_ids")


def input_positions(gm: fx.GraphModule) -> dict[str, int]:
    """Positions of the model inputs the runtime reads (`l_kwargs_timestep_` -> "timestep")."""
    out = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, node in enumerate(placeholders):
        name = re.sub(r"^l_(kwargs_)?|_$", "", node.name)
        if name in NAMED_INPUTS and name not in out:
            out[name] = i
    return out


def _calling_module(param: torch.Tensor):
    """The nn.Module whose forward dynamo is running (found once, when a model's first call
    creates its controller): the `self` of a caller frame that owns `param`."""
    frame = sys._getframe(2)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, torch.nn.Module) and any(p is param for p in candidate.parameters()):
            return candidate
        frame = frame.f_back
    return None


class _Graph:
    def __init__(self, report: GraphReport, lowered: Lowered, param_positions: list[int],
                 positions: dict, schedule_options: dict):
        self.report = report
        self.lowered = lowered
        self.param_positions = param_positions
        self.input_positions = positions
        self.schedule_options = schedule_options
        self._orphan: Controller | None = None   # for graphs that receive no parameter

    @property
    def compiles(self) -> int:
        return self.lowered.compiles

    def controller_for(self, args) -> Controller:
        if not self.param_positions:
            self._orphan = self._orphan or Controller()
            return self._orphan
        params = [args[i] for i in self.param_positions]
        ctl = REGISTRY.lookup(params[0])
        if ctl is None:
            ctl = Controller()
            module = _calling_module(params[0])
            if module is not None:
                ctl.attach(module)
                REGISTRY.register(module.parameters(), ctl)
            REGISTRY.register(params, ctl)
        return ctl


class RewrittenGraph(_Graph):
    """A token-gathered graph: extra inputs [active_index, caches...], extra outputs caches."""

    def __init__(self, report, lowered, param_positions, positions, schedule_options,
                 num_outputs: int, index_device):
        super().__init__(report, lowered, param_positions, positions, schedule_options)
        self.num_outputs = num_outputs
        self.index_device = index_device

    def __call__(self, *args):
        return self.controller_for(args).run_rewritten(self, args)


class FallbackGraph(_Graph):
    """A graph left as it is (the reason is in its report)."""

    def __call__(self, *args):
        return self.controller_for(args).run_fallback(self, args)


def param_positions(example_inputs) -> list[int]:
    return [i for i, t in enumerate(example_inputs) if isinstance(t, torch.nn.Parameter)]
