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

import dataclasses
import logging
import weakref
from dataclasses import dataclass
from typing import Optional

import torch

from .adaptive import AdaptiveSchedule, Decision
from .config import resolve_config
from .geometry import geometry_for, image_tokens
from .registry import REGISTRY
from .report import Report

DEFAULT_BRANCH = "default"
log = logging.getLogger(__name__)


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
    step: Optional[int] = None       # automatic schedule only
    branch: str = DEFAULT_BRANCH
    phase: Optional[str] = None


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
        self._num_calls = 0
        self._num_full_calls = 0
        self.last_call: Optional[CallRecord] = None
        self.step_records: list[CallRecord] = []        # this generation's automatic calls
        self.branch = DEFAULT_BRANCH
        self.manual = False                             # set by refresh() / set_active()
        self.branch_name: Optional[str] = None          # from cache_context, via enable()
        self.num_inference_steps: Optional[int] = None  # from enable() (set_timesteps)
        self._adaptive: Optional[AdaptiveSchedule] = None
        self._auto_off_reason: Optional[str] = None

    # ------------------------------------------------------------------ public API
    def refresh(self) -> None:
        """The next call computes every token and refills all caches. Switches the
        controller to manual control (the automatic schedule stops)."""
        self.manual = True
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
        self.manual = True

    @property
    def schedule(self) -> Optional[AdaptiveSchedule]:
        """The automatic schedule (config, step clock, last analysis); None before the
        first call under it."""
        return self._adaptive

    def region_map(self) -> torch.Tensor:
        """The last analysis as a LongTensor [frames, h, w]: 0 static, 1 medium, 2 active."""
        from .analyzer import region_map
        analysis = self._adaptive.analysis if self._adaptive else None
        if analysis is None:
            raise RuntimeError("no region analysis yet: it runs after the warm-up steps of a "
                               "generation under the automatic schedule")
        return region_map(analysis, analysis.grid)

    def stats(self) -> dict:
        report = Report(self.reports)
        last = self.last_call
        stats = {
            "graphs": len(self._graphs),
            "compiles": sum(g.compiles for g in self._graphs.values()),
            "calls": self._num_calls,
            "full_calls": self._num_full_calls,
            "active_fraction": (last.active / last.total) if last and last.total else 1.0,
            "num_image_tokens": self._num_image_tokens,
            "cache_bytes": sum(s.nbytes for s in self._states.values()),
            "rewritten": report.rewritten,
            "fallback_reason": "; ".join(report.reasons) or None,
            "mode": "manual" if self.manual else "auto",
        }
        stats.update(self._schedule_stats())
        return stats

    def _schedule_stats(self) -> dict:
        adaptive = self._adaptive
        generation = self.step_records
        out = {"auto_disabled": self._auto_off_reason}
        if adaptive is None:
            return out
        analysis = adaptive.analysis
        first = {}
        for c in generation:
            first.setdefault(c.step, c)
        total = sum(c.total for c in generation)
        out.update({
            "levels": [first[s].phase for s in sorted(first)],
            "analysis_seconds": analysis.elapsed_s if analysis else None,
            "active_fraction_map": analysis.active_fraction if analysis else None,
            "medium_fraction_map": analysis.medium_fraction if analysis else None,
            "compute_saved": 1 - sum(c.active for c in generation) / total if total else 0.0,
            "branches": sorted({c.branch for c in generation}),
        })
        return out

    @property
    def reports(self) -> list:
        return [g.report for g in self._graphs.values()]

    # ------------------------------------------------------------------ runtime side
    def attach(self, module: torch.nn.Module) -> None:
        self._module_ref = weakref.ref(module)
        self.name = type(module).__name__

    def run_fallback(self, graph, args):
        self._graphs[id(graph)] = graph
        self._record(CallRecord(graph.report.graph, True, 0, 0))
        return graph.lowered(*args)

    def run_rewritten(self, graph, args):
        """One call of a rewritten graph: pick the index, pass and refill the caches."""
        self._graphs[id(graph)] = graph
        n = graph.report.num_image_tokens
        decision = None if self.manual else self._decide(graph, args)
        if decision is not None:
            self.branch = decision.branch
            state = self._states.setdefault((id(graph), self.branch), GraphState())
            full = decision.index is None or state.caches is None
            if not full and decision.index is not self._active:
                self._active, self._active_on = decision.index, {}
            return self._run(graph, args, state, full, decision)
        state = self._states.setdefault((id(graph), self.branch), GraphState())
        full = self._refresh_next or self._active is None or state.caches is None
        if not full and self._active.numel() and int(self._active[-1]) >= n:
            raise IndexError(f"the active index reaches past the {n} image tokens of this graph "
                             "(did the resolution change?); call set_active() again")
        return self._run(graph, args, state, full, None)

    def _run(self, graph, args, state: GraphState, full: bool, decision: Optional[Decision]):
        n = graph.report.num_image_tokens
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
        record = CallRecord(graph.report.graph, full, index.numel(), n)
        if decision is not None:
            record.step, record.branch, record.phase = decision.step, decision.branch, decision.phase.value
            self.step_records.append(record)
        self._record(record)
        return outs[:k]

    def _record(self, record: CallRecord) -> None:
        self._num_calls += 1
        self._num_full_calls += record.full
        self.last_call = record

    # ------------------------------------------------------------------ automatic schedule
    def _decide(self, graph, args) -> Optional[Decision]:
        """The automatic schedule's decision for this call, or None when it cannot run."""
        if self._auto_off_reason is not None:
            return None
        module = self._module_ref() if self._module_ref else None
        geometry = geometry_for(module)
        positions = graph.input_positions
        why = None
        if "timestep" not in positions or "hidden_states" not in positions:
            why = "the graph has no `timestep` or `hidden_states` input"
        elif geometry is None:
            why = (f"unknown model family {type(module).__name__ if module else '(model not found)'}: "
                   "add it to jano_compile.geometry.GEOMETRY, or drive ctl.set_active() yourself")
        if why:
            self._auto_off_reason = why
            log.warning("jano: automatic schedule off, every step computes all tokens: %s", why)
            return None
        if self._adaptive is None or self._adaptive.options != graph.schedule_options:
            # first call, or the model was compiled again with other schedule options
            self._adaptive = AdaptiveSchedule(resolve_config(geometry.family, graph.schedule_options),
                                              options=dict(graph.schedule_options))
            if self.num_inference_steps and "num_inference_steps" not in graph.schedule_options:
                self.set_num_inference_steps(self.num_inference_steps)
        timestep = float(args[positions["timestep"]].reshape(-1)[0])
        decision = self._adaptive.decide(timestep, self.branch_name)
        if decision.new_generation:
            self.step_records = []
        if self._adaptive.wants_latents(decision):
            img_ids = args[positions["img_ids"]] if "img_ids" in positions else None
            tokens, grid = image_tokens(geometry, module, args[positions["hidden_states"]], img_ids)
            if tokens.shape[1] != graph.report.num_image_tokens:
                self._auto_off_reason = (f"the latent holds {tokens.shape[1]} tokens but the graph "
                                         f"{graph.report.num_image_tokens}")
                return None
            self._adaptive.record_latents(tokens, grid)
        return decision

    def set_num_inference_steps(self, num_steps: Optional[int]) -> None:
        """The length of the coming generation (places the cool-down). `enable()` calls it."""
        self.num_inference_steps = num_steps
        if self._adaptive is None:
            return
        try:
            self._adaptive.config = dataclasses.replace(self._adaptive.config,
                                                        num_inference_steps=num_steps)
            self._adaptive.all_full = False
        except ValueError as e:   # shorter than warm-up + cool-down: compute everything
            log.info("jano: %s; every step computes all tokens", e)
            self._adaptive.all_full = True

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
