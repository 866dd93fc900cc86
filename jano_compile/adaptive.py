"""The automatic Jano schedule: from calls to (generation, step, branch), warm-up latents to
region levels, and each step's level to the index of tokens the next call recomputes.

Clock heuristic (document for users, see README):
  * a call with a smaller timestep than the last starts the next step;
  * a call with a larger timestep starts a new generation (analysis, masks, caches reset);
  * calls with an equal timestep are branches of one step (split CFG: cond, uncond), each
    with its own caches; a name from `transformer.cache_context(name)` (set by
    `jano_compile.enable`) wins over call order.
  Limits: schedulers whose timesteps rise within a run, or solvers that call the model
  twice per step at different timesteps (Heun, DPM-2), break this counting; drive the
  controller with `ctl.set_active` / `ctl.refresh` instead, or set `num_inference_steps`
  to the number of model calls.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from .analyzer import RegionAnalysis, analyze, region_map, render_region_map
from .config import JanoConfig
from .schedule import Level, Phase, step_phase

log = logging.getLogger(__name__)


@dataclass
class StepClock:
    """Counts steps and branches from the timesteps of successive calls."""
    last_timestep: Optional[float] = None
    step: int = -1
    call_in_step: int = 0
    generation: int = 0

    def tick(self, timestep: float) -> bool:
        """Advance on one call; True when the call starts a new generation."""
        new_generation = self.last_timestep is None or timestep > self.last_timestep
        if new_generation:
            self.generation += 1
            self.step, self.call_in_step = 0, 0
        elif timestep < self.last_timestep:
            self.step += 1
            self.call_in_step = 0
        else:
            self.call_in_step += 1
        self.last_timestep = timestep
        return new_generation


@dataclass
class Decision:
    """What one call computes: every token (`index` None) or the tokens at `index`."""
    step: int
    branch: str
    phase: Phase
    index: Optional[torch.Tensor]
    new_generation: bool


@dataclass
class AdaptiveSchedule:
    """Per-model automatic schedule (lives in the controller)."""
    config: JanoConfig
    options: dict = field(default_factory=dict)                # the options it was built from
    clock: StepClock = field(default_factory=StepClock)
    warmup_latents: list = field(default_factory=list)      # [B, N, C] per warm-up step
    grid: Optional[tuple] = None
    analysis: Optional[RegionAnalysis] = None
    analysed: bool = False
    warned_no_length: bool = False
    all_full: bool = False      # the run is shorter than warm-up + cool-down

    def decide(self, timestep: float, branch_name: Optional[str]) -> Decision:
        new_generation = self.clock.tick(timestep)
        if new_generation:
            self.warmup_latents, self.analysis, self.grid, self.analysed = [], None, None, False
        step = self.clock.step
        branch = branch_name or ("default" if self.clock.call_in_step == 0
                                 else f"call{self.clock.call_in_step}")
        if self.config.num_inference_steps is None and not self.warned_no_length:
            log.warning("jano: num_inference_steps is unknown, so no cool-down steps can be "
                        "placed; pass options={'num_inference_steps': N} or use "
                        "jano_compile.enable(pipe)")
            self.warned_no_length = True
        phase = step_phase(step, None, self.config)
        if phase.level != Level.FULL and not self.analysed:
            self._analyze()
        if phase.level == Level.FULL or self.analysis is None or self.all_full:
            index = None
        elif phase.level == Level.MEDIUM:
            index = self.analysis.medium_index
        else:
            index = self.analysis.active_index
        return Decision(step, branch, phase, index, new_generation)

    def wants_latents(self, decision: Decision) -> bool:
        return (decision.phase == Phase.WARMUP and self.clock.call_in_step == 0
                and len(self.warmup_latents) == decision.step)

    def record_latents(self, tokens: torch.Tensor, grid: tuple) -> None:
        self.warmup_latents.append(tokens.detach().float().cpu())
        self.grid = grid

    def _analyze(self) -> None:
        self.analysed = True
        if len(self.warmup_latents) < 2 or self.grid is None:
            log.warning("jano: no warm-up latents to analyse (%d recorded); computing every "
                        "token", len(self.warmup_latents))
            self.analysis = None
            return
        self.analysis = analyze(self.warmup_latents, self.grid, self.config)
        log.info("jano: regions %.0f%% active, %.0f%% medium, %.0f%% static (analysis %.3f s)",
                 100 * self.analysis.active_fraction, 100 * self.analysis.medium_fraction,
                 100 * self.analysis.static_fraction, self.analysis.elapsed_s)
        self.warmup_latents = []
        if self.config.save_dir:
            os.makedirs(self.config.save_dir, exist_ok=True)
            path = os.path.join(self.config.save_dir, f"region_map_{self.clock.generation:03d}.png")
            render_region_map(region_map(self.analysis, self.grid)).save(path)
            log.info("jano: wrote %s", path)
