"""Step clocks: from successive model calls to (generation, step, call within the step).

Two sources, one `Tick`:

* `SchedulerClock` (what `jano_compile.enable(pipe)` uses): the pipeline's scheduler says
  when a generation starts (`set_timesteps`) and when a step ends (`step`). Nothing is read
  from the model's inputs, so a call costs no device-to-host synchronisation, and timesteps
  that a bf16 pipeline rounds to equal values are still distinct steps.
* `TimestepClock` (a bare sampling loop): reads the timestep the model receives, one
  device-to-host copy per call on a GPU. The first change of the timestep in a generation
  tells which way time runs (falling: sigma, 1000 -> 0; rising: Lumina2, Z-Image, Ideogram4
  pass 1 - sigma); a later move that way starts the next step, a move back a new
  generation, which learns the direction again (so a warm-up call at another timestep
  costs one generation, not every later one), an equal timestep is another branch of the
  same step (split CFG; Heun's two evaluations at one time are two branches too). Solvers
  that evaluate the model at a time between two steps (DPM-2), and timesteps rounded to
  equal values between steps (bf16 at 100 steps) break this count.

Each branch of a step has caches of its own (a set of K/V per branch), so calls within one
step count as at most MAX_BRANCHES branches: more calls at one timestep (a warm-up or
timing loop that repeats one input) reuse the last branch's caches, with one warning,
instead of allocating a cache set per call.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

log = logging.getLogger(__name__)

MAX_BRANCHES = 4    # split CFG calls the model twice per step; a few pipelines three times


def _branch_call(calls: int, warned: bool, scheduler: bool = False) -> tuple[int, bool]:
    """(the call's index among the step's branches, warned) for the `calls`-th call of a
    step (from 0): calls beyond MAX_BRANCHES share the last branch, said once (`warned`
    True: not said). `scheduler`: the step is the scheduler's (enable())."""
    if calls < MAX_BRANCHES:
        return calls, warned
    if not warned and scheduler:
        log.warning("jano: %d model calls and no step of the pipeline's scheduler between them: taken as "
                    "repeats of branch %d of one step. A pipeline that steps copies of its scheduler "
                    "(SkyReels-V2's diffusion forcing) or none never ends a step for jano: its calls stay "
                    "in the first step's warm-up and compute every token", calls + 1, MAX_BRANCHES)
    elif not warned:
        log.warning("jano: %d calls within one step (the same timestep): taken as repeats of branch %d, not "
                    "as new CFG branches with caches of their own; in a sampling loop the timestep changes "
                    "from step to step", calls + 1, MAX_BRANCHES)
    return MAX_BRANCHES - 1, True


@dataclass(frozen=True)
class Tick:
    """Where one model call falls: generation (counts from 1), step (from 0), and how many
    calls of this step's evaluation came before it (0: the first branch). `time`: the step's
    time for forecasts (the scheduler's sigma where it has one), None for the step index.
    `evaluation`: which of the scheduler's evaluations at the step's time this is (Heun
    evaluates the model twice at each time after the first, on two different latents: each
    evaluation is a branch of its own)."""
    generation: int
    step: int
    call_in_step: int
    time: Optional[float] = None
    evaluation: int = 0


def evaluations(timesteps: Sequence[float]) -> list[tuple[int, int]]:
    """(step, evaluation) of each scheduler step of a generation: scheduler steps at the
    timestep of the one before (Heun's [t0, t1, t1, t2, t2, ...]) are further evaluations of
    its step."""
    positions, step, evaluation = [], -1, 0
    for k, timestep in enumerate(timesteps):
        if k and timestep == timesteps[k - 1]:
            evaluation += 1
        else:
            step, evaluation = step + 1, 0
        positions.append((step, evaluation))
    return positions


@dataclass
class TimestepClock:
    """Counts steps and branches from the timesteps of successive calls."""
    last_timestep: Optional[float] = None
    generation: int = 0
    step: int = -1
    direction: Optional[float] = None     # -1.0 falling, 1.0 rising: learned at a generation's first change
    calls_in_step: int = 0                # calls of this step before the last one
    most_calls: int = 0                   # the most calls at one timestep so far
    last_step_calls: int = 0              # the calls of the last step that ended (the timestep moved)
    warned_branches: bool = False

    def tick(self, timestep: float, branches: bool = True) -> Tick:
        """The call at `timestep`. `branches` False: the caller does not take the calls of
        a step as branches (no warning about their number)."""
        if self.last_timestep is not None and timestep != self.last_timestep and self.direction is None:
            self.direction = 1.0 if timestep > self.last_timestep else -1.0
        if timestep == self.last_timestep:
            self.calls_in_step += 1
        elif self.last_timestep is None or (timestep - self.last_timestep) * self.direction < 0:
            if self.last_timestep is not None:
                self.last_step_calls = self.calls_in_step + 1
            self.generation += 1
            self.step, self.calls_in_step = 0, 0
            self.direction = None
        else:
            self.last_step_calls = self.calls_in_step + 1
            self.step += 1
            self.calls_in_step = 0
        self.last_timestep = timestep
        self.most_calls = max(self.most_calls, self.calls_in_step + 1)
        call, warned = _branch_call(self.calls_in_step, self.warned_branches or not branches)
        self.warned_branches |= branches and warned
        return Tick(self.generation, self.step, call)


@dataclass
class SchedulerClock:
    """Driven by the pipeline's scheduler: `start_generation` at `set_timesteps`,
    `end_step` after each `scheduler.step`; `tick` at each model call. Scheduler steps at one
    timestep (Heun's) are evaluations of one step (`evaluations`)."""
    generation: int = 0
    step: int = 0
    calls_in_step: int = 0           # calls since the scheduler's last step
    times: Optional[list] = None     # per step: the scheduler's sigma (fp32), if it has them
    warned_branches: bool = False
    on_call: Optional[Callable[[], None]] = None   # at each model call, first (enable(): a swapped scheduler)
    evaluation: int = 0
    _positions: Optional[list] = None    # per scheduler step: (step, evaluation); None: one evaluation each
    _scheduler_steps: int = 0            # scheduler steps of this generation so far

    def start_generation(self, times: Optional[list] = None,
                         positions: Optional[list[tuple[int, int]]] = None) -> None:
        """`times`: per step; `positions`: `evaluations()` of the generation's timesteps."""
        self.generation += 1
        self.step, self.evaluation, self.calls_in_step, self._scheduler_steps = 0, 0, 0, 0
        self.times = times
        self._positions = positions

    def place(self, times: Optional[list], positions: Optional[list[tuple[int, int]]]) -> None:
        """The generation under way, whose first scheduler step has not ended yet, runs
        `positions` (its timesteps turned out to start later than `start_generation` was told)."""
        self.times, self._positions = times, positions

    def end_step(self, done: Optional[int] = None) -> None:
        """A scheduler step ended; `done`: the scheduler steps of this generation done now,
        where the scheduler counts them (its step index), else one more than before."""
        self._scheduler_steps = self._scheduler_steps + 1 if done is None else done
        self.calls_in_step = 0
        positions, k = self._positions, self._scheduler_steps
        if positions is not None and k < len(positions):
            self.step, self.evaluation = positions[k]
        else:       # past the timesteps the generation announced: one evaluation each
            self.step, self.evaluation = self.step + 1, 0

    def tick(self) -> Tick:
        time = self.times[self.step] if self.times and self.step < len(self.times) else None
        call, self.warned_branches = _branch_call(self.calls_in_step, self.warned_branches, scheduler=True)
        self.calls_in_step += 1
        return Tick(max(self.generation, 1), self.step, call, time, self.evaluation)
