"""Step clocks: from successive model calls to (generation, step, call within the step).

Two sources, one `Tick`:

* `SchedulerClock` (what `jano_compile.enable(pipe)` uses): the pipeline's scheduler says
  when a generation starts (`set_timesteps`) and when a step ends (`step`). Nothing is read
  from the model's inputs, so a call costs no device-to-host synchronisation, and timesteps
  that a bf16 pipeline rounds to equal values are still distinct steps.
* `TimestepClock` (a bare sampling loop): reads the timestep the model receives, one
  device-to-host copy per call on a GPU. The first change of the timestep tells which way
  time runs for this model (falling: sigma, 1000 -> 0; rising: Lumina2, Z-Image, Ideogram4
  pass 1 - sigma); a later move that way starts the next step, a move back a new
  generation, an equal timestep is another branch of the same step (split CFG). Solvers
  that call the model twice per step at different timesteps (Heun, DPM-2), and timesteps
  rounded to equal values between steps (bf16 at 100 steps) break this count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Tick:
    """Where one model call falls: generation (counts from 1), step (from 0), and how many
    calls of this step came before it (0: the first branch). `time`: the step's time for
    forecasts (the scheduler's sigma where it has one), None for the step index."""
    generation: int
    step: int
    call_in_step: int
    time: Optional[float] = None


@dataclass
class TimestepClock:
    """Counts steps and branches from the timesteps of successive calls."""
    last_timestep: Optional[float] = None
    generation: int = 0
    step: int = -1
    call_in_step: int = 0
    direction: Optional[float] = None     # -1.0 falling, 1.0 rising: learned at the first change

    def tick(self, timestep: float) -> Tick:
        if self.last_timestep is not None and timestep != self.last_timestep and self.direction is None:
            self.direction = 1.0 if timestep > self.last_timestep else -1.0
        if timestep == self.last_timestep:
            self.call_in_step += 1
        elif self.last_timestep is None or (timestep - self.last_timestep) * self.direction < 0:
            self.generation += 1
            self.step, self.call_in_step = 0, 0
        else:
            self.step += 1
            self.call_in_step = 0
        self.last_timestep = timestep
        return Tick(self.generation, self.step, self.call_in_step)


@dataclass
class SchedulerClock:
    """Driven by the pipeline's scheduler: `start_generation` at `set_timesteps`,
    `end_step` after each `scheduler.step`; `tick` at each model call."""
    generation: int = 0
    step: int = 0
    calls_in_step: int = 0
    times: Optional[list] = None     # per step: the scheduler's sigma (fp32), if it has them

    def start_generation(self, times: Optional[list] = None) -> None:
        self.generation += 1
        self.step, self.calls_in_step = 0, 0
        self.times = times

    def end_step(self) -> None:
        self.step += 1
        self.calls_in_step = 0

    def tick(self) -> Tick:
        time = self.times[self.step] if self.times and self.step < len(self.times) else None
        tick = Tick(max(self.generation, 1), self.step, self.calls_in_step, time)
        self.calls_in_step += 1
        return tick
