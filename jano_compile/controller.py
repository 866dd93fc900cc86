"""The per-model state of Jano: which tokens the next call recomputes, and the caches.

    ctl = jano_compile.controller(model)   # nn.Module or what torch.compile returned
    ctl.refresh()            # the next call computes every token and refills all caches
    ctl.set_active(index)    # later calls recompute only these image tokens
    ctl.stats()

`index` holds positions among the image tokens, in the order the model's sequence holds
them (row-major over the patch grid, frames first); text tokens are placed by the graph.
After a refresh the next call is full, then calls return to the active set.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch

from .registry import REGISTRY

DEFAULT_BRANCH = "default"


@dataclass
class GraphState:
    """Caches of one rewritten graph for one branch: [out_cache, k_0, v_0, k_1, ...]."""
    caches: Optional[list] = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.caches or ())


@dataclass
class CallRecord:
    graph: str
    full: bool
    active: int
    total: int


class Controller:
    """Jano's state for one model instance (never shared between models)."""

    def __init__(self, name: str = "model"):
        self.name = name
        self._module_ref = None
        self._active: Optional[torch.Tensor] = None     # sorted int64 [n], on CPU
        self._active_on: dict = {}                      # device -> copy of _active
        self._full_index: dict = {}                     # (N, device) -> arange(N)
        self._refresh_next = False
        self._states: dict = {}                         # (graph id, branch) -> GraphState
        self._graphs: dict = {}                         # graph id -> graph (rewritten or not)
        self._num_image_tokens: Optional[int] = None
        self._calls: list[CallRecord] = []
        self.branch = DEFAULT_BRANCH

    # ------------------------------------------------------------------ public API
    def refresh(self) -> None:
        """The next call computes every token and refills all caches."""
        self._refresh_next = True

    def set_active(self, index: torch.Tensor) -> None:
        """Later calls recompute only the image tokens at `index` (int tensor [n], 0 <= n <= N)."""
        if not isinstance(index, torch.Tensor):
            raise TypeError(f"set_active() takes a LongTensor of image-token positions, got "
                            f"{type(index).__name__}")
        if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
            raise TypeError(f"set_active() takes integer token positions, got a {index.dtype} "
                            "tensor (for a mask use mask.nonzero().flatten())")
        if index.dim() != 1:
            raise ValueError(f"set_active() takes a 1-D index, got shape {tuple(index.shape)}")
        if self._num_image_tokens is None:
            raise RuntimeError("set_active() before the first full step: call the model once "
                               "(every call before set_active is a full step) so that the caches "
                               "hold every token")
        n = self._num_image_tokens
        index = index.detach().to("cpu", torch.long)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise IndexError(f"set_active(): positions must lie in [0, {n}) (the model has {n} "
                             f"image tokens); got min {int(index.min())}, max {int(index.max())}")
        sorted_index = torch.sort(index).values
        if sorted_index.numel() > 1 and bool((sorted_index[1:] == sorted_index[:-1]).any()):
            raise ValueError("set_active(): the index holds duplicate positions")
        self._active = sorted_index
        self._active_on = {}

    def stats(self) -> dict:
        rewritten_graphs = [g for g in self._graphs.values() if g.report.rewritten]
        holding = [g for g in self._graphs.values() if g.report.holds_image_tokens]
        reasons = [g.report.reason for g in holding if not g.report.rewritten]
        last = self._calls[-1] if self._calls else None
        return {
            "graphs": len(self._graphs),
            "compiles": sum(g.compiles for g in self._graphs.values()),
            "calls": len(self._calls),
            "full_calls": sum(c.full for c in self._calls),
            "active_fraction": (last.active / last.total) if last and last.total else 1.0,
            "num_image_tokens": self._num_image_tokens,
            "cache_bytes": sum(s.nbytes for s in self._states.values()),
            "rewritten": bool(holding) and len(rewritten_graphs) == len(holding),
            "fallback_reason": "; ".join(reasons) if reasons else None,
        }

    @property
    def reports(self) -> list:
        return [g.report for g in self._graphs.values()]

    # ------------------------------------------------------------------ runtime side
    def attach(self, module: torch.nn.Module) -> None:
        self._module_ref = weakref.ref(module)
        self.name = type(module).__name__

    def run_fallback(self, graph, args):
        self._graphs[id(graph)] = graph
        self._calls.append(CallRecord(graph.report.graph, True, 0, 0))
        return graph.lowered(*args)

    def run_rewritten(self, graph, args):
        """One call of a rewritten graph: pick the index, pass and refill the caches."""
        self._graphs[id(graph)] = graph
        n = graph.report.num_image_tokens
        state = self._states.setdefault((id(graph), self.branch), GraphState())
        full = self._refresh_next or self._active is None or state.caches is None
        if not full and self._active.numel() and int(self._active[-1]) >= n:
            raise IndexError(f"the active index reaches past the {n} image tokens of this graph "
                             "(did the resolution change?); call set_active() again")
        device = graph.index_device
        index = self._index(n, device, full)
        if state.caches is None:
            state.caches = [torch.zeros(c.shape, dtype=getattr(torch, c.dtype), device=device)
                            for c in graph.report.caches]
        outs = graph.lowered(*args, index, *state.caches)
        k = graph.num_outputs
        state.caches = list(outs[k:])
        if full:
            self._refresh_next = False
            self._num_image_tokens = n
        self._calls.append(CallRecord(graph.report.graph, full, index.numel(), n))
        return outs[:k]

    def _index(self, n: int, device, full: bool) -> torch.Tensor:
        if full:
            key = (n, str(device))
            if key not in self._full_index:
                self._full_index[key] = torch.arange(n, device=device)
            return self._full_index[key]
        key = str(device)
        if key not in self._active_on:
            self._active_on[key] = self._active.to(device)
        return self._active_on[key]


def controller(model) -> Controller:
    """The controller of `model` (an nn.Module, or what torch.compile returned), created on
    first use. Two models never share one."""
    module = getattr(model, "_orig_mod", model)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"jano_compile.controller() takes an nn.Module or the result of "
                        f"torch.compile(module, ...), got {type(model).__name__}")
    params = list(module.parameters())
    if not params:
        raise ValueError(f"{type(module).__name__} has no parameters: jano finds a model's "
                         "controller through its parameters")
    ctl = REGISTRY.find(params)
    if ctl is None:
        ctl = Controller()
    ctl.attach(module)
    REGISTRY.register(params, ctl)
    return ctl
