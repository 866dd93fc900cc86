"""The per-model state of Jano: which tokens the next call recomputes, and the caches.

    ctl = jano_compile.controller(model)   # nn.Module or what torch.compile returned
    ctl.refresh()            # the next call computes every token and refills all caches
    ctl.set_active(index)    # later calls recompute only these image tokens
    ctl.stats()

`index` holds positions among the image tokens, in the order the model's sequence holds
them (row-major over the patch grid, frames first); text tokens are placed by the graph.
After a refresh the next call is full, then calls return to the active set.

The controller is a facade: the index comes from a policy (`ManualPolicy` once the user
calls `set_active`, or `refresh` before the automatic schedule ran; else `AutoPolicy`, the
automatic schedule, which a `refresh` only makes compute one call in full), the states
from the `CacheStore`, and each rewritten graph runs through its `GraphRunner`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
import weakref
from dataclasses import dataclass
from typing import Optional

import torch

from jano_compile.passes.signature import Role

from .auto_policy import AutoPolicy
from .cache_store import CacheStore
from .call_site import warn_user
from .manual_policy import ManualPolicy
from .policy import DEFAULT_BRANCH, CallPlan, branch_of_tick
from .registry import REGISTRY
from .report import Report
from .stats import Stats

log = logging.getLogger(__name__)

#: calls a generation's stats keep (a bare loop under set_active() counts every call on, with
#: no generation ending: its stats then describe the most recent calls)
MAX_STEP_RECORDS = 100_000


@dataclass
class CallRecord:
    graph: str
    full: bool
    active: int
    total: int
    step: Optional[int] = None       # the generation's step: automatic schedule, or manual under enable()
    branch: str = DEFAULT_BRANCH
    phase: Optional[str] = None


class Controller:
    """Jano's state for one model instance (never shared between models)."""

    def __init__(self, name: str = "model"):
        self.name = name
        self._module_ref = None
        self.manual_policy = ManualPolicy()
        self.auto_policy = AutoPolicy()
        self.store = CacheStore()
        # id(graph) -> CompiledGraph, held weakly: a graph dynamo dropped (torch._dynamo.reset(),
        # a recompile) takes its caches with it
        self._graphs: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._num_image_tokens: Optional[int] = None    # of the last full rewritten step
        self._num_calls = 0
        self._num_full_calls = 0
        self.rewritten_calls = 0        # calls that ran a rewritten graph
        self._warned_unrewritten = False
        self._warned_fallbacks: set = set()     # reasons of unrewritten graphs set_active() warned of
        self._warned_unknown_branches = False
        self._warned_captured_again = False
        self._warned_no_tail: set = set()       # graphs whose skip steps run without a tail
        self.uncompiled: Optional[str] = None   # why steps of a generation ran without reaching jano
        self._last_report = None                # the report of the graph the last call ran
        self.last_call: Optional[CallRecord] = None
        self.step_records: list[CallRecord] = []        # this generation's calls with a step
        self.branch_name: Optional[str] = None          # branch(), or cache_context under enable()
        self._full_next = False                         # refresh() while the schedule runs

    def __reduce__(self):
        raise TypeError("a jano Controller holds its model's live graphs and caches and cannot be pickled "
                        "or copied; pickle ctl.stats() (a dict) instead")

    # ------------------------------------------------------------------ public API
    @property
    def calls(self) -> int:
        """Calls of the model's compiled graphs so far."""
        return self._num_calls

    @property
    def manual(self) -> bool:
        """True once `set_active` or `refresh` took over from the automatic schedule."""
        return self.manual_policy.engaged

    def refresh(self) -> None:
        """The next call computes every token and refills all caches. While the automatic
        schedule runs, it goes on after that call; under manual control (`set_active`), later
        calls return to the active set; before either, it starts manual control (in a bare
        loop with a warning: the schedule then never runs)."""
        if self._not_rewritten("refresh"):
            return
        if not self.manual and self.auto_policy.running:
            self._full_next = True
            return
        policy = self.auto_policy
        if not self.manual and policy.off_reason is None and policy.scheduler_clock is None:
            warnings.warn("jano: refresh() before the model's first call starts manual control: every "
                          "call computes all tokens until set_active(), and the automatic schedule does not "
                          "run (ctl.resume_schedule() hands control back). The first call is a full step "
                          "anyway: leave this refresh() out to keep the schedule", stacklevel=2)
        self.manual_policy.refresh()

    def set_active(self, index: torch.Tensor) -> None:
        """Later calls recompute only the image tokens at `index` (int tensor [n], 0 <= n <= N).
        The others keep their last output (`reuse="hold"`) or are forecast from their own
        history (`"forecast"`, the default), counting each call of a branch as one step.
        Takes over from the automatic schedule: under `enable()` until the generation ends
        (the step times stay the scheduler's; call it from a step callback: a set given
        after a generation's last step applies to no step, as the next generation starts
        on the schedule), in a bare loop for good (each call one step, counted on from the
        schedule's last step).
        On a model jano did not rewrite, warns once with the reason; calls stay full."""
        if self._not_rewritten("set_active"):
            return
        if self._num_image_tokens is None:
            raise RuntimeError("set_active() before the first full step: call the model once "
                               "(its first call is a full step) so that the caches hold every token")
        taking_over = not self.manual and self.auto_policy.running
        self.manual_policy.set_active(index, self._num_image_tokens)
        last = self.auto_policy.last_tick
        if taking_over and self.auto_policy.scheduler_clock is None and last is not None:
            self.store.continue_time_from(last.step + 1)   # one time axis in the forecast history

    @contextlib.contextmanager
    def branch(self, name: str):
        """Calls inside are the branch `name` (split CFG: "cond", "uncond"), with caches of
        its own, whatever the clock makes of them: for a bare loop that calls the model once
        per branch (`enable()` names branches from diffusers' `cache_context`).

            with ctl.branch("uncond"):
                noise_uncond = model(**uncond_inputs)
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"ctl.branch() takes a non-empty str, got {name!r}")
        outer, self.branch_name = self.branch_name, name
        try:
            yield
        finally:
            self.branch_name = outer

    def release(self) -> None:
        """Free the caches and forget the graphs seen so far (`disable()` does this): their
        memory goes back; a later call of a compiled model starts with a full step, and a
        bare loop's steps are counted afresh."""
        for graph in self._graphs.values():
            if graph.runner is not None:
                graph.runner.release_calls()
        self.store.clear()
        self._graphs.clear()
        self._last_report = None
        self._num_calls = self._num_full_calls = 0
        self.last_call = None
        self.step_records = []          # the stats of the run under way: none now
        self._num_image_tokens = None
        self.auto_policy.restart_clock()
        self.resume_schedule()

    def resume_schedule(self) -> None:
        """Hand control back to the automatic schedule after `set_active` / `refresh`; its
        next generation starts with the warm-up (where a generation's inputs turned the
        schedule off, a latent without a grid, it runs again). `enable()` does this whenever
        a generation starts (the scheduler's `set_timesteps`)."""
        self.manual_policy = ManualPolicy()
        self._full_next = False
        self.auto_policy.resume()

    def set_num_inference_steps(self, num_steps: Optional[int]) -> None:
        """The length of the coming generation (places the cool-down). `enable()` calls it
        whenever the scheduler's `set_timesteps` runs."""
        self.auto_policy.set_num_inference_steps(num_steps)

    @property
    def schedule(self):
        """The automatic schedule (config, analysis); None before the first call under it."""
        return self.auto_policy.schedule

    def region_map(self) -> torch.Tensor:
        """The last analysis as a LongTensor [frames, h, w]: 0 static, 1 medium, 2 active."""
        from .analyzer import region_map
        analysis = self.schedule.analysis if self.schedule else None
        why = self.auto_policy.no_regions or (self.schedule.no_analysis if self.schedule else None)
        if analysis is None and why is not None:
            raise RuntimeError(f"no region analysis: {why}")
        if analysis is None:
            raise RuntimeError("no region analysis yet: it runs after the warm-up steps of a "
                               "generation under the automatic schedule")
        return region_map(analysis, analysis.grid)

    @property
    def reports(self) -> list:
        return [g.report for g in self._graphs.values()]

    def stats(self) -> Stats:
        report = Report(self.reports)
        last = self.last_call
        runners = [g.runner for g in self._graphs.values() if g.runner is not None]
        return Stats(
            graphs=len(self._graphs),
            compiles=sum(g.compiles for g in self._graphs.values()),
            compile_seconds=sum(r.compile_seconds for r in runners),
            static_graphs=sum(len(r.static) for r in runners),
            cuda_graphs=sum(r.captures for r in runners),
            capture_failures=[f for r in runners for f in r.capture_failures],
            calls=self._num_calls,
            full_calls=self._num_full_calls,
            active_fraction=(last.active / last.total) if last and last.total else 1.0,
            num_image_tokens=self._num_image_tokens,
            cache_bytes=self.store.nbytes,
            forecast_bytes=self.store.nbytes_of({Role.HISTORY, Role.HISTORY_TIME, Role.FORECAST_ERROR,
                                                 Role.KV_PREV, Role.KV_TIME}),
            rewritten=report.rewritten,
            fallback_reason=report.fallback_reason if self._graphs or not self.uncompiled else self.uncompiled,
            mode="manual" if self.manual else "auto",
            auto_disabled=self.auto_policy.off_reason,
            **self._schedule_stats())

    def _schedule_stats(self) -> dict:
        schedule = self.schedule
        generation = self.step_records
        if schedule is None and not generation:
            return {}
        analysis = schedule.analysis if schedule is not None else None
        first = {}
        for c in generation:
            first.setdefault(c.step, c)
        total = sum(c.total for c in generation)
        return {
            "levels": [first[s].phase for s in sorted(first)],
            "analysis_seconds": analysis.elapsed_s if analysis else None,
            "active_fraction_map": analysis.active_fraction if analysis else None,
            "medium_fraction_map": analysis.medium_fraction if analysis else None,
            "compute_saved": 1 - sum(c.active for c in generation) / total if total else None,
            "branches": sorted({c.branch for c in generation}),
            "reranks": schedule.reranks if schedule is not None else 0,
            "periods": (schedule.periods.token_fractions() if schedule is not None and schedule.periods is not None
                        and schedule.periods.token_periods is not None else None),
        }

    def _not_rewritten(self, what: str) -> bool:
        """True (and a warning, once) when the model ran and no graph of it was rewritten:
        `what` then has nothing to act on. When only the last call ran a graph holding image
        tokens that was not rewritten, warns (once per reason) and returns False: dynamo
        picks the graph by the inputs (shapes, grad mode, ...), so the next call may run it
        again (with dynamic=None, after a second shape every shape runs the symbolic graph),
        and such a call computes all tokens; calls that run a rewritten graph still follow
        `what`."""
        report = Report(self.reports)
        last = self._last_report
        if self._graphs and not any(g.rewritten for g in report.graphs):
            if not self._warned_unrewritten:
                self._warned_unrewritten = True
                warnings.warn(f"jano: {what}() has no effect: {self.name} was not rewritten "
                              f"({report.fallback_reason}); every call computes all tokens", stacklevel=3)
            return True
        if last is not None and last.holds_image_tokens and not last.rewritten \
                and last.reason not in self._warned_fallbacks:
            self._warned_fallbacks.add(last.reason)
            warnings.warn(f"jano: the last call of {self.name} ran a graph jano did not rewrite "
                          f"({last.reason}); calls that run it compute all tokens, whatever {what}() "
                          "says (the calls that run a rewritten graph follow it)", stacklevel=3)
        return False

    # ------------------------------------------------------------------ runtime side
    def attach(self, module: torch.nn.Module) -> None:
        self._module_ref = weakref.ref(module)
        self.name = type(module).__name__

    @property
    def module(self) -> Optional[torch.nn.Module]:
        return self._module_ref() if self._module_ref else None

    def run(self, graph, args):
        """One call of a compiled graph (rewritten or not) with dynamo's arguments."""
        if id(graph) not in self._graphs:
            self._warn_if_captured_again(graph)
            self._graphs[id(graph)] = graph
            weakref.finalize(graph, self.store.drop, id(graph))
            self._note_first_call(graph)
        self._last_report = graph.report
        self.uncompiled = None
        if graph.runner is None:
            self._record(CallRecord(graph.report.graph, True, 0, 0))
            if self.auto_policy.scheduler_clock is None:
                # a bare loop: stats describe the run under way, which saves nothing (under enable()
                # a generation whose steps run no rewritten graph clears them: a model in several
                # graphs, some rewritten, runs unrewritten ones in every step)
                self.step_records = []
            return graph.unrewritten(*args)
        plan, step = self._plan(graph, args)
        self.rewritten_calls += 1
        if plan.new_generation:
            for graph_key, idle in self.store.new_generation():
                dropped_from = self._graphs.get(graph_key)
                if dropped_from is not None and dropped_from.runner is not None:
                    dropped_from.runner.release_calls(idle)
        state = self.store.state(id(graph), plan.branch, graph.signature)
        runner = graph.runner
        step_time = float(next(t for t in (plan.time, plan.step, state.calls + state.time_offset)
                               if t is not None))
        n = graph.signature.num_image_tokens
        full = plan.index is None or not state.computed
        skip = plan.skip and state.computed
        if skip and runner.tail is None:
            self._warn_no_tail(graph)
        if skip and runner.tail is not None:
            outputs = runner.skip(args, state, step_time)
            full, computed = False, 0
        elif full:
            outputs = runner.full_step(args, state, step_time)
            computed = n
        else:
            outputs = runner.partial_step(args, plan.index, state, step_time, exact=plan.exact)
            computed = plan.index.numel()
        if full:
            self.manual_policy.ran_full()
            self._num_image_tokens = n
        if step is None and self.manual:     # a bare loop under manual control: each call a step of its time axis
            step = int(step_time)
        # a step planned to skip work that ran full (this graph or branch had no caches yet: CFG
        # turned off midway gives a new batch size) reads as a refresh
        phase = "refresh" if full and plan.index is not None and plan.phase is not None else plan.phase
        record = CallRecord(graph.report.graph, full, computed, n, step, plan.branch, phase)
        if step is not None:
            if plan.new_generation:
                self.step_records = []
            self.step_records.append(record)
            if len(self.step_records) > MAX_STEP_RECORDS:    # manual control in a bare loop never ends
                del self.step_records[:MAX_STEP_RECORDS // 2]
        self._record(record)
        return outputs

    def _plan(self, graph, args) -> tuple[CallPlan, Optional[int]]:
        """The call's plan, and the generation step it counts as in stats (None: a manual
        call in a bare loop, which counts at its step on the forecast's time axis)."""
        clock = self.auto_policy.scheduler_clock
        if clock is not None and clock.on_call is not None:
            clock.on_call()          # before `manual` is read: a swapped scheduler may start a generation
        if not self.manual:
            plan = self.auto_policy.plan(graph, args, self.module, self.branch_name,
                                         token_errors=lambda: self._token_errors(graph))
            if plan is not None:
                if self._full_next:         # refresh(): this call full, the schedule goes on
                    self._full_next = False
                    if plan.index is not None:      # (a warm-up or cool-down step is full anyway)
                        plan = dataclasses.replace(plan, index=None, exact=False, phase="refresh")
                return plan, plan.step
        tick = self.auto_policy.manual_tick(graph, args)
        if tick is not None:
            branch = branch_of_tick(tick, self.branch_name)
        elif self.branch_name is not None:
            branch = self.branch_name
        elif self.auto_policy.branches_unknown and self.last_call is not None:
            branch = self.last_call.branch      # a repeated step goes on with the caches the last call wrote
            self._warn_unknown_branches()
        else:
            branch = DEFAULT_BRANCH
        plan = self.manual_policy.plan(graph.signature.num_image_tokens, branch)
        if self.auto_policy.scheduler_clock is None:
            return dataclasses.replace(plan, phase="manual"), None
        # under enable(): the scheduler's step time, and the step counts in the generation's stats
        # ("off": the automatic schedule turned off and no set_active(): every token computed)
        plan = dataclasses.replace(plan, time=tick.time if tick.time is not None else float(tick.step),
                                   phase="manual" if self.manual else "off")
        return plan, tick.step

    def _warn_no_tail(self, graph) -> None:
        """Said once per graph: a step that computes no image token runs the whole graph."""
        if graph.report.graph in self._warned_no_tail:
            return
        self._warned_no_tail.add(graph.report.graph)
        log.warning("jano: %s: steps that compute no image token run its rewritten graph on none, "
                    "uncompiled, not a tail of a few ops (%s)", graph.report.graph, graph.report.skip_steps)

    def _warn_unknown_branches(self) -> None:
        if self._warned_unknown_branches:
            return
        self._warned_unknown_branches = True
        warn_user(
            f"jano: {self.name} was called again at the same timestep: calls at one timestep were taken as "
            "split-CFG branches with caches of their own while the schedule ran; under manual control "
            "(set_active) each such call is one step that goes on with the caches of the call before it. "
            "If the calls alternate inputs at this timestep (cond / uncond), a partial step of one reads the "
            "other's K/V: name each call's branch (`with ctl.branch(\"uncond\"): model(...)`), or use "
            "jano_compile.enable(pipe)")

    def _token_errors(self, graph) -> Optional[torch.Tensor]:
        """Each image token's last measured forecast error [N] on the CPU, averaged over the
        graph's branches (split CFG) where measured; None where the graph measures none."""
        errors = self.store.tensors_of(id(graph), Role.FORECAST_ERROR)
        if not errors:
            return None
        return torch.stack([e.float().cpu() for e in errors]).nanmean(dim=0)

    def _warn_if_captured_again(self, graph) -> None:
        """Say once when dynamo captured the model again for inputs of the same shapes: the
        graphs keep caches of their own, so calls that alternate between them compute from
        older caches (and a refresh() refills only the graph the next call runs)."""
        key = graph.recompile_key
        if key is None or self._warned_captured_again:
            return
        if any(g.recompile_key == key for g in self._graphs.values()):
            self._warned_captured_again = True
            warn_user(f"jano: dynamo captured {self.name} again for inputs of the same shapes and dtypes (another "
                      "guard changed: the keyword arguments given (one that only some calls pass, as an uncond "
                      "call's guidance=None or skip-layer guidance's skip_layers), an input's strides (a "
                      "non-contiguous view), the module (a LoRA loaded, fused QKV projections, another attention "
                      "backend), train()/eval(), or no_grad()/inference_mode(); TORCH_LOGS=recompiles names it). "
                      "Each graph keeps caches and forecast history of its own until ctl.release() or disable(): "
                      "harmless where each graph serves calls of their own (one CFG branch's, or all calls after a "
                      "change), but calls of one branch that alternate between them compute from older caches: "
                      "pass contiguous inputs (.contiguous()) and the same arguments to every call, and keep the "
                      "model's mode fixed")

    def _note_first_call(self, graph) -> None:
        report = graph.report
        if report.rewritten or report.holds_image_tokens or self._warned_unrewritten:
            return
        if not any(g.report.rewritten for g in self._graphs.values()):
            warn_user(f"jano: no image-token region in a graph of {self.name} ({report.reason}); "
                      "it runs unrewritten. jano rewrites diffusion transformers: see "
                      "jano_compile.explain(model, ...) for what it found")
            self._warned_unrewritten = True

    def _record(self, record: CallRecord) -> None:
        self._num_calls += 1
        self._num_full_calls += record.full
        self.last_call = record


def controller(model) -> Controller:
    """The controller of `model` (an nn.Module, or what torch.compile returned), created on
    first use and attached to the model. Two models never share one."""
    module = getattr(model, "_orig_mod", model)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"jano_compile.controller() takes an nn.Module or the result of "
                        f"torch.compile(module, ...), got {type(model).__name__}")
    params = list(module.parameters())
    if not params:
        raise ValueError(f"{type(module).__name__} has no parameters: jano finds a model's "
                         "controller through its parameters")
    ctl = REGISTRY.find(params) or REGISTRY.for_module(module) or Controller()
    ctl.attach(module)
    REGISTRY.register(params, ctl, module)
    return ctl
