"""Which controller belongs to which model, found from the parameters a graph receives.

Two instances of one model class can share one dynamo graph, so the compiled code cannot
hold its model; it looks the controller up through the parameters passed at each call.
This map is the one process-wide table of jano-compile; it holds parameters weakly and
forgets a model's entries when its parameters are freed. It also maps each model (weakly)
to its controller, so that a model whose parameters were all replaced
(`load_state_dict(..., assign=True)`) keeps its controller.
"""
from __future__ import annotations

import weakref
from typing import Iterable

import torch


class ControllerRegistry:
    def __init__(self):
        self._by_param: dict[int, tuple[weakref.ref, object]] = {}
        self._by_module: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def for_module(self, module: torch.nn.Module):
        return self._by_module.get(module)

    def lookup(self, param: torch.Tensor):
        entry = self._by_param.get(id(param))
        if entry is None or entry[0]() is not param:
            return None
        return entry[1]

    def find(self, params: Iterable[torch.Tensor]):
        for p in params:
            ctl = self.lookup(p)
            if ctl is not None:
                return ctl
        return None

    def register(self, params: Iterable[torch.Tensor], controller, module: torch.nn.Module = None) -> None:
        if module is not None:
            self._by_module[module] = controller
        for p in params:
            key = id(p)
            if self.lookup(p) is controller:
                continue
            self._by_param[key] = (weakref.ref(p), controller)
            weakref.finalize(p, self._forget, key, controller)

    def _forget(self, key: int, controller) -> None:
        entry = self._by_param.get(key)
        if entry is not None and entry[1] is controller:
            del self._by_param[key]


REGISTRY = ControllerRegistry()

