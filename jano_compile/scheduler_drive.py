"""enable()'s step clocks, driven by the pipeline's scheduler.

`set_timesteps` (or `set_begin_index`, img2img) starts a generation and gives its length;
`step` ends a step. Where a scheduler keeps a `step_index`, the clock follows it rather
than counting `step` calls (Cosmos 1.0 steps twice per model evaluation and rewinds the
index between). A generation's first step is placed among the timesteps once (the
scheduler's index, else the timestep `step` receives: one read per generation): pipelines
that cut the timesteps without `set_begin_index` (CogVideoX and Wan video-to-video) run
fewer steps than `set_timesteps` made. No timestep is read from the device otherwise.

Each expert's generation is the steps it runs (experts.py): with one expert, all of them.
The scheduler is that of the pipeline whose loop calls a model (an expert's compiled
wrapper, which pipelines made with `from_pipe()` share, each maybe with a scheduler of its
own), else the enabled pipeline's: another scheduler than the one driving the clocks (a
swap, `pipe.scheduler = X.from_config(...)`, or another pipeline's) is found at the model
call, whose generation it then starts. Copies of a driving scheduler (`copy.deepcopy`:
SkyReels-V2's per-frame schedulers, LTX-2's audio scheduler) are plain schedulers.
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .call_site import calling_self, warn_user
from .clock import SchedulerClock, evaluations
from .controller import Controller
from .experts import owners

#: what `SchedulerDrive` sets on a scheduler instance
WATCHED = ("set_timesteps", "set_begin_index", "step", "__getstate__")

#: Schedulers that draw fresh noise into the whole latent at every step (they re-noise the
#: model's x0 prediction): an output forecast or held from earlier steps misses that noise.
#: Measured on tiny random-weight FLUX pipelines: 15-22 dB against the full model, where the
#: deterministic flow-match Euler gives 43-55 dB; on the bundled model 7-18 dB (SSIM <= 0.22);
#: SCM on a tiny Sana Sprint 24-26 dB, where Sana with flow-match Euler gives 38 dB. LCM
#: re-noises x0 the same way (not measured).
RENOISING_SCHEDULERS = ("FlowMatchLCMScheduler", "SCMScheduler", "LCMScheduler")

#: Schedulers whose timesteps end with the final time, at which the pipeline does not call
#: the model (Sana Sprint runs `timesteps[:-1]`): a generation is one step shorter.
ENDS_AT_FINAL_TIME = ("SCMScheduler",)


@dataclass
class Expert:
    """One transformer the pipeline's loop calls (Wan 2.2: two, see experts.py) and jano's
    state for it: its own controller, schedule and step clock."""
    name: str                     # the pipeline's attribute
    transformer: torch.nn.Module
    compiled: torch.nn.Module     # torch.compile's wrapper of `transformer`
    controller: Controller
    clock: SchedulerClock
    calls_at_start: int = 0       # the controller's calls when the current generation began
    rewritten_at_start: int = 0   # and its calls of rewritten graphs
    warned: bool = False          # that no step reached it (once per enable())


@dataclass
class _Run:
    """The generation under way: where it begins among the scheduler's timesteps, and
    whether its first step was placed there yet."""
    timesteps: list
    begin: int = 0
    placed: bool = False


class SchedulerDrive:
    """Drives the experts' clocks from the scheduler the pipeline runs (see the module's
    docstring). The experts' clocks reach it weakly (`follow_a_swap` at each model call);
    the pipeline's handle holds it."""

    def __init__(self, pipe, experts: list[Expert], set_on: Callable[[object, str, object], None]):
        self.pipe, self.experts, self._set_on = pipe, experts, set_on
        self.driving = None        # the scheduler whose calls drive the clocks
        self.run = _Run([])
        self.drive(pipe.scheduler)
        follow = weakref.WeakMethod(self.follow_a_swap)
        for expert in experts:
            expert.clock.on_call = lambda: follow() is not None and follow()()
            expert.controller.auto_policy.scheduler_clock = expert.clock

    def start_generation(self, scheduler, begin: int = 0, new: bool = True) -> None:
        """The generation of `scheduler`'s timesteps from `begin` on; `new` False: the one
        under way, placed at `begin` (its first step ran there)."""
        if new:
            self.run = _Run(_timesteps(scheduler))
        self.run.begin = begin
        timesteps = self.run.timesteps[begin:]
        owner = owners(self.pipe, scheduler, timesteps)
        for expert in self.experts:
            own = [k for k, name in enumerate(owner) if name == expert.name]
            positions = evaluations([timesteps[k] for k in own])
            times = _sigmas(scheduler, [begin + k for k in own], positions)
            ctl = expert.controller
            # no timesteps at all (no values to read): the length is unknown
            ctl.set_num_inference_steps(positions[-1][0] + 1 if positions else (0 if timesteps else None))
            per_step = _per_scheduler_step(owner, expert.name, positions)
            if not new:
                expert.clock.place(times, per_step)
                continue
            expert.calls_at_start, expert.rewritten_at_start = ctl.calls, ctl.rewritten_calls
            expert.clock.start_generation(times, per_step)
            ctl.resume_schedule()       # set_active()/refresh() in a callback last for one generation

    def drive(self, scheduler) -> None:
        """Watch `scheduler`: its calls drive the clocks from now on."""
        _warn_if_renoising(scheduler)
        if self.driving is not None:      # a swapped-out scheduler no longer ticks the clocks
            for name in WATCHED:
                self.driving.__dict__.pop(name, None)
        original_set_timesteps, original_step = scheduler.set_timesteps, scheduler.step

        @functools.wraps(original_set_timesteps)   # pipelines inspect its signature
        def set_timesteps(*args, **kwargs):
            result = original_set_timesteps(*args, **kwargs)
            self.start_generation(scheduler)
            return result
        self._set_on(scheduler, "set_timesteps", set_timesteps)

        original_set_begin_index = getattr(scheduler, "set_begin_index", None)
        if original_set_begin_index is not None:
            @functools.wraps(original_set_begin_index)
            def set_begin_index(begin_index: int = 0):
                # img2img and inpainting start partway: the run is the timesteps from there on
                result = original_set_begin_index(begin_index)
                self.start_generation(scheduler, begin_index)
                return result
            self._set_on(scheduler, "set_begin_index", set_begin_index)

        @functools.wraps(original_step)
        def step(*args, **kwargs):
            result = original_step(*args, **kwargs)
            self.end_step(scheduler, args[1] if len(args) > 1 else kwargs.get("timestep"))
            return result
        self._set_on(scheduler, "step", step)

        def __getstate__():
            # copy.copy / deepcopy / pickle: a scheduler without these wrappers, whose steps
            # are its own (they would run this scheduler's step on this scheduler's state)
            return {k: v for k, v in scheduler.__dict__.items() if k not in WATCHED}
        self._set_on(scheduler, "__getstate__", __getstate__)
        self.driving = scheduler

    def end_step(self, scheduler, timestep) -> None:
        """After `scheduler.step(output, timestep, ...)`: the clocks move to the scheduler's
        next step."""
        index = getattr(scheduler, "step_index", None)      # the next step's, where it keeps one
        index = index if isinstance(index, int) else None
        if not self.run.placed:
            self.run.placed = True
            first = index - 1 if index is not None else _index_of(timestep, self.run.timesteps, self.run.begin)
            if first is not None and first > self.run.begin:
                self.start_generation(scheduler, first, new=False)
            for expert in self.experts:
                if expert.controller.rewritten_calls == expert.rewritten_at_start:
                    # a step of this generation ran and no call of the expert ran a rewritten graph
                    # (none reached it, or grad was on): its stats stop describing the generation
                    # before (a set_timesteps() with no step after it, WanAnimate's after its last
                    # segment, leaves them be)
                    expert.controller.step_records = []
        done = index - self.run.begin if index is not None else None
        for expert in self.experts:
            expert.clock.end_step(done)
            if expert.clock.step >= 2 and expert.controller.calls == expert.calls_at_start and not expert.warned:
                expert.controller.uncompiled = _warn_uncompiled(expert.clock.step)
                expert.warned = True

    def follow_a_swap(self) -> None:
        """At each model call: the scheduler of the pipeline that calls drives the clocks."""
        caller = calling_self(lambda obj: any(getattr(obj, e.name, None) is e.compiled for e in self.experts))
        scheduler = getattr(caller if caller is not None else self.pipe, "scheduler", None)
        if scheduler is not self.driving and hasattr(scheduler, "set_timesteps"):
            self.drive(scheduler)    # its set_timesteps ran unwatched: this call starts the generation
            self.start_generation(scheduler, getattr(scheduler, "begin_index", None) or 0)


def _per_scheduler_step(owner: list[str], name: str, positions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The clock's (step, evaluation) at each scheduler step for the expert `name`, whose own
    scheduler steps have `positions`: another expert's steps hold the expert's next own step
    (past its last: one beyond), at which it is not called."""
    result, k = [], 0
    for who in owner:
        if who == name:
            result.append(positions[k])
            k += 1
        else:
            result.append(positions[k] if k < len(positions) else (positions[-1][0] + 1 if positions else 0, 0))
    return result


def _index_of(timestep, timesteps: list, begin: int) -> Optional[int]:
    """Where `timestep` (a number or 0-d/1-element tensor) first lies in `timesteps` from
    `begin` on; None where it is not there."""
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1:
            return None
        timestep = timestep.item()
    if not isinstance(timestep, (int, float)):
        return None
    return next((k for k in range(begin, len(timesteps)) if timesteps[k] == timestep), None)


def _timesteps(scheduler) -> list:
    """The scheduler's timesteps of the generation, read once per generation."""
    timesteps = scheduler.timesteps
    if timesteps is None or getattr(timesteps, "is_meta", False):    # no values (a model on "meta")
        return []
    timesteps = timesteps.detach().cpu().tolist() if isinstance(timesteps, torch.Tensor) else list(timesteps)
    return timesteps[:-1] if type(scheduler).__name__ in ENDS_AT_FINAL_TIME else timesteps


def _sigmas(scheduler, steps: list[int], positions: list[tuple[int, int]]) -> Optional[list]:
    """The scheduler's sigma per step (fp32, read once per generation; a step's first
    evaluation's) as the forecast's time axis, for flow-matching schedulers (sigmas in
    [0, 1], which the output is close to linear in); None otherwise: the step index is used.
    `steps`: the scheduler steps of the expert's generation, whose `positions` are
    `clock.evaluations()` of their timesteps (Heun evaluates twice at one time)."""
    sigmas = getattr(scheduler, "sigmas", None)
    if not isinstance(sigmas, torch.Tensor) or sigmas.is_meta or sigmas.dim() != 1 or not steps \
            or len(sigmas) <= steps[-1]:
        return None
    sigmas = sigmas.detach().float().cpu()[[k for k, (_, evaluation) in zip(steps, positions) if evaluation == 0]]
    if sigmas.min() < 0 or sigmas.max() > 1 or bool((sigmas[1:] == sigmas[:-1]).any()):
        return None
    return sigmas.tolist()


def _warn_if_renoising(scheduler) -> None:
    config = getattr(scheduler, "config", None)
    if type(scheduler).__name__ in RENOISING_SCHEDULERS or getattr(config, "stochastic_sampling", False):
        warn_user(f"jano: {type(scheduler).__name__} draws fresh noise into the whole latent at every "
                  "step, which the outputs jano forecasts (or holds) on the steps it skips do not "
                  "follow: expect another image than the full model's (7-22 dB PSNR, SSIM 0.01-0.22 on "
                  "the bundled model). Use a deterministic scheduler (e.g. FlowMatchEulerDiscreteScheduler "
                  "without stochastic_sampling); a few-step model distilled for this scheduler (LCM, Sana "
                  "Sprint) has few steps to skip: leave jano off there")


def _warn_uncompiled(steps: int) -> str:
    """Steps of a generation ran, none through jano: dynamo ran the transformer uncompiled.
    Warns, and returns the reason for `stats()["fallback_reason"]`."""
    limit = getattr(torch._dynamo.config, "recompile_limit", None)
    reason = ("denoising steps ran and none called the jano-compiled transformer: dynamo runs it "
              f"uncompiled once it reached its recompile limit (torch._dynamo.config.recompile_limit = "
              f"{limit}) on the transformer's forward code, which counts every compile of it in this "
              "process: after several enable()/disable() rounds with other options or shapes, or other "
              "models whose class shares diffusers' forward wrapper (FLUX, SD3, Wan, ...); "
              "torch._dynamo.reset() before enable() clears the old graphs. Or the pipeline that ran "
              "holds the transformer uncompiled while sharing the enabled pipeline's scheduler (made "
              "with from_pipe() before enable(): make it after)")
    warn_user(f"jano: {steps} {reason}")
    return reason
