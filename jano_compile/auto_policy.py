"""Automatic index policy: Jano's schedule run by itself, call by call.

Per call it ticks a step clock (the pipeline's scheduler under `enable()`, else the
timestep the model receives: see clock.py), records the latents of warm-up steps as image
tokens (geometry.py), and asks the `AdaptiveSchedule` which tokens this step recomputes.
Where the graph's sequence holds slots besides the latent grid's tokens (geometry.LatentRows:
Ideogram 4's text), the schedule sees the grid's tokens only, and each call that computes
any of them computes every slot too (geometry.SequenceSlots).
It turns itself off, once and with a logged reason, where it cannot run: no timestep or
hidden-states input, an unknown model family, latents that do not match the graph.

The config is resolved once per set of compile options (explicit option > the recipe's
family preset > the recipe's base > default, config.py); the generation length learned
from the scheduler overrides the `num_inference_steps` option, since it is the length of
the run under way.
"""
from __future__ import annotations

import logging
import weakref
from typing import Callable, Mapping, Optional

import torch

from .adaptive import AdaptiveSchedule
from .clock import SchedulerClock, Tick, TimestepClock
from .config import resolve_config
from .geometry import GeometryError, SequenceSlots, geometry_for, image_tokens
from .policy import DEFAULT_BRANCH, CallPlan

log = logging.getLogger(__name__)


class AutoPolicy:
    """The automatic schedule's state for one model."""

    def __init__(self):
        self.schedule: Optional[AdaptiveSchedule] = None
        self.off_reason: Optional[str] = None
        self._off_by_inputs = False
        self.num_inference_steps: Optional[int] = None   # learned from the scheduler
        self.scheduler_clock: Optional[SchedulerClock] = None   # set by enable()
        self._timestep_clock = TimestepClock()
        self._built_from: Optional[dict] = None
        self._geometry: Optional[tuple] = None    # (weak ref to the module, its TokenGeometry), found once
        self._slots: Optional[SequenceSlots] = None   # this generation's, where the sequence has slots
        self.last_tick = None             # of the timestep clock (a bare loop)
        self._warned_length = False
        self.no_regions: Optional[str] = None     # why the schedule runs without a region analysis

    @property
    def running(self) -> bool:
        """The schedule has run and is not off."""
        return self.schedule is not None and self.off_reason is None

    def restart_clock(self) -> None:
        """Count calls afresh: the next call starts a generation, whatever timestep the last
        one had (a bare loop), and whatever generation a new clock counts from (enable()
        again after disable()): the schedule forgets which generation it last saw."""
        self._timestep_clock = TimestepClock()
        self.last_tick = None
        if self.schedule is not None:
            self.schedule.generation = None

    def set_num_inference_steps(self, num_steps: Optional[int]) -> None:
        self.num_inference_steps = num_steps
        if self.schedule is not None:
            self.schedule.set_num_inference_steps(num_steps)

    def _turn_off(self, why: str, inputs: bool = False) -> None:
        """`inputs`: the cause lies in this generation's inputs (a latent without a grid), not
        in the model: `resume()` (a new generation under enable(), release()) turns it on again."""
        self.off_reason = why
        self._off_by_inputs = inputs
        log.warning("jano: automatic schedule off, every step computes all tokens: %s", why)

    def resume(self) -> None:
        """The schedule on again where only a generation's inputs turned it off."""
        if self._off_by_inputs:
            self.off_reason, self._off_by_inputs = None, False

    def _without_regions(self, why: str) -> None:
        """No region analysis, said once: the schedule's steps compute every token or none."""
        if self.no_regions is None:
            log.warning("jano: no region analysis (%s); the schedule runs on without one, since each of "
                        "its steps computes every token or none (settings that give regions their own "
                        "intervals or periods would turn it off)", why)
        self.no_regions = why

    def _schedule_for(self, family: str, options: Mapping) -> AdaptiveSchedule:
        """The schedule for these compile options (rebuilt when they change)."""
        if self.schedule is None or self._built_from != options:
            self.schedule = AdaptiveSchedule(resolve_config(family, options))
            self._built_from = dict(options)
            if self.num_inference_steps is not None:
                self.schedule.set_num_inference_steps(self.num_inference_steps)
        return self.schedule

    def _check_length(self, tick, expected: Optional[int]) -> None:
        """In a bare loop, warn once when a generation ended at another length than
        `num_inference_steps` (its cool-down fell elsewhere); under enable() the scheduler
        gives every generation's length."""
        last, self.last_tick = self.last_tick, tick
        if (last is None or tick.generation == last.generation or expected is None
                or self._warned_length or last.step + 1 == expected):
            return
        log.warning("jano: a generation ran %d steps, but num_inference_steps=%d: its cool-down steps "
                    "were placed for %d; pass the run's length (options={'num_inference_steps': N} or "
                    "ctl.set_num_inference_steps(N)) or use jano_compile.enable(pipe)",
                    last.step + 1, expected, expected)
        self._warned_length = True

    def _geometry_of(self, module: Optional[torch.nn.Module]):
        """`geometry_for(module)`, derived once per module (its class and config), not per call.
        The module is held weakly: the controller is the value of a registry entry keyed
        weakly by that module, so a strong reference here would keep the model alive for good."""
        held = self._geometry
        if held is None or (held[0]() if held[0] is not None else None) is not module:
            self._geometry = (weakref.ref(module) if module is not None else None, geometry_for(module))
        return self._geometry[1]

    def _on_grid(self, errors: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Per-token `errors` of the graph's sequence, those of the latent grid's tokens."""
        return errors if self._slots is None else self._slots.on_grid(errors)

    def _timestep_tick(self, graph, args, branches: bool = True) -> Tick:
        """A bare loop's tick, from the timestep the graph receives (one device-to-host copy
        per call on a GPU); `branches`: a step's calls are taken as its branches."""
        return self._timestep_clock.tick(float(args[graph.roles.timestep].reshape(-1)[0]), branches)

    def manual_tick(self, graph, args) -> Optional[Tick]:
        """Where a call under manual control falls: under enable() the scheduler's tick; in a
        bare loop whose steps have several calls at each timestep (split CFG), the
        timestep's, so that each branch keeps its own caches; else None (every call one step
        of one branch). The timestep is read (one device-to-host copy per call, as the
        automatic schedule took) once some timestep had several calls; they are branches
        once a step with several calls ended with the timestep moving on: a loop that
        repeats one timestep (each call a step of its own) is not split CFG."""
        if self.scheduler_clock is not None:
            return self.scheduler_clock.tick()
        clock = self._timestep_clock
        if clock.most_calls < 2 or graph.roles.timestep is None:
            return None
        split = clock.last_step_calls > 1
        tick = self._timestep_tick(graph, args, branches=split)
        return tick if clock.last_step_calls > 1 else None

    @property
    def branches_unknown(self) -> bool:
        """A bare loop's last call was another at the same timestep, and no step with several
        calls ended before (the timestep has not moved on from them): these calls may be
        split-CFG branches or repeated steps, which the clock cannot tell apart."""
        clock = self._timestep_clock
        return self.scheduler_clock is None and clock.calls_in_step >= 1 and clock.last_step_calls <= 1

    def plan(self, graph, args, module: Optional[torch.nn.Module], branch_name: Optional[str],
             token_errors: Optional[Callable[[], Optional[torch.Tensor]]] = None) -> Optional[CallPlan]:
        """This call's plan, or None when the automatic schedule cannot run.
        `token_errors`: the measured forecast error of each image token (see adaptive.py)."""
        if self.off_reason is not None:
            return None
        roles = graph.roles
        try:
            geometry = self._geometry_of(module)
        except Exception as e:  # noqa: BLE001 - the schedule turns off, the model keeps running
            self._turn_off(f"the token geometry of {type(module).__name__} could not be derived: "
                           f"{type(e).__name__}: {e}")
            return None
        if roles.hidden_states is None or (roles.timestep is None and self.scheduler_clock is None):
            self._turn_off("the graph has no `timestep` or `hidden_states` input")
            return None
        if geometry is None:
            self._turn_off("the model was not found: call jano_compile.controller(compiled) before the "
                           "first call, or drive ctl.set_active() yourself")
            return None
        schedule = self._schedule_for(geometry.family, graph.schedule_options)
        if self.scheduler_clock is not None:
            tick = self.scheduler_clock.tick()
        else:
            tick = self._timestep_tick(graph, args)
            self._check_length(tick, schedule.config.num_inference_steps)
        grid_errors = None if token_errors is None else (lambda: self._on_grid(token_errors()))
        decision = schedule.decide(tick, branch_name, grid_errors)
        if decision.new_generation:
            self._slots = None
        if schedule.wants_latents(decision):
            ids = args[roles.position_ids] if roles.position_ids is not None else None
            n = graph.signature.num_image_tokens
            try:
                rows = graph.latent_rows(args) if graph.latent_rows is not None else None
                tokens, grid = image_tokens(geometry, args[roles.hidden_states], ids, graph.grid_hint, n, rows)
                expected = n if rows is None else rows.numel()
                if tokens.shape[1] != expected:
                    raise GeometryError(f"the latent holds {tokens.shape[1]} tokens but the graph {expected}")
            except Exception as e:  # noqa: BLE001 - as above
                why = f"the latent could not be cut into image tokens: {type(e).__name__}: {e}"
                if schedule.config.uses_regions:
                    self._turn_off(f"{why}. These settings give regions steps of their own (a work budget, or "
                                   "intervals that differ between levels, as recipe='paper'), which needs a "
                                   "region map; the default recipe, whose steps compute every token or none, "
                                   "runs without one", inputs=True)
                    return None
                self._without_regions(why)      # the schedule needs no regions: it runs on
            else:
                self._slots = SequenceSlots(rows, n) if rows is not None and rows.numel() < n else None
                schedule.record_latents(tokens, grid)
        index = decision.index
        if index is not None and self._slots is not None:
            index = self._slots.sequence_index(index)
        return CallPlan(index, decision.branch or DEFAULT_BRANCH, decision.step,
                        decision.phase.value, decision.new_generation, decision.time,
                        exact=decision.exact)
