"""The callables the backend hands to dynamo. At each call they find the model's controller
through the parameters they receive (see registry.py) and let it run the graph."""
from __future__ import annotations

import torch

from .controller import Controller
from .lowering import Lowered
from .registry import REGISTRY
from .report import GraphReport


class _Graph:
    def __init__(self, report: GraphReport, lowered: Lowered, param_positions: list[int]):
        self.report = report
        self.lowered = lowered
        self.param_positions = param_positions
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
            REGISTRY.register(params, ctl)
        return ctl


class RewrittenGraph(_Graph):
    """A token-gathered graph: extra inputs [active_index, caches...], extra outputs caches."""

    def __init__(self, report, lowered, param_positions, num_outputs: int, index_device):
        super().__init__(report, lowered, param_positions)
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
