"""The automatic Jano schedule: from ticks of a step clock (clock.py) to warm-up latents,
region levels, and each step's index of tokens the next call recomputes.

A new generation (a tick with another generation number) drops the analysis and the
recorded latents. With `levels_from="error"` the regions are ranked again after every full
step, by the forecast error their tokens showed (read from the graph's state through the
`token_errors` callable the policy passes: one device-to-host copy per re-ranking). Branches of one step (split CFG: cond, uncond) are named by
`transformer.cache_context(name)` where `jano_compile.enable` set it, else by call order
("default", "call1", ...); each keeps its own caches.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .analyzer import RegionAnalysis, analyze, region_map, render_region_map, rerank_by_error
from .clock import Tick
from .config import JanoConfig
from .periods import PERIODS, RegionPeriods, adaptive_budget, periodic_steps, periodic_work_range
from .policy import branch_of_tick
from .schedule import Level, Phase, schedule_plan, step_phase

log = logging.getLogger(__name__)
NO_TOKENS = torch.empty(0, dtype=torch.long)


@dataclass
class Decision:
    """What one call computes: every token (`index` None) or the tokens at `index`."""
    step: int
    branch: str
    phase: Phase
    index: Optional[torch.Tensor]
    new_generation: bool
    time: Optional[float] = None   # the step's forecast time (None: the step index)
    exact: bool = True          # `index` is one of the few fixed sets of this generation (static
                                # shapes: one graph per exact length); False: bucketed lengths


@dataclass
class AdaptiveSchedule:
    """Per-model automatic schedule (owned by the automatic index policy)."""
    config: JanoConfig
    generation: Optional[int] = None        # of the last tick
    call_in_step: int = 0                   # of the last tick
    warmup_latents: list = field(default_factory=list)      # [B, N, C] per warm-up step
    grid: Optional[tuple] = None
    analysis: Optional[RegionAnalysis] = None
    analysed: bool = False
    no_analysis: Optional[str] = None       # why this generation's analysis found nothing to analyse
    warned_no_length: bool = False
    rerank_due: bool = False    # levels_from="error": a full step ran since the last ranking
    reranks: int = 0            # re-rankings (or period assignments) by measured error in this generation
    periods: Optional[RegionPeriods] = None    # work budget: this generation's per-region periods
    warned_budget: bool = False
    warned_all_full: bool = False
    _all_full: Optional[tuple] = None       # (config, all_full of it)

    @property
    def all_full(self) -> bool:
        """The run is too short to skip work: every step of its plan is a full one (warm-up,
        cool-down, the refresh after warm-up)."""
        config = self.config
        if self._all_full is None or self._all_full[0] is not config:   # once per config
            steps = config.num_inference_steps
            full = steps is not None and all(level == Level.FULL for level in schedule_plan(steps, config))
            self._all_full = (config, full)
        return self._all_full[1]

    def set_num_inference_steps(self, num_steps: Optional[int]) -> None:
        """The length of the coming generation (places the cool-down)."""
        self.config = dataclasses.replace(self.config, num_inference_steps=num_steps)
        if self.all_full:
            # a warning, once: the paper recipe's FLUX preset (7 + 2) leaves a 10-step run nothing to skip
            (log.info if self.warned_all_full else log.warning)(
                "jano: a %d-step run leaves no step to skip work (warm-up %d, cool-down %d, a refresh "
                "after warm-up): every step computes all tokens; fewer warmup_steps / cooldown_steps, or "
                "more steps, would leave steps to skip", num_steps, self.config.warmup_steps,
                self.config.cooldown_steps)
            self.warned_all_full = True

    def decide(self, tick: Tick, branch_name: Optional[str],
               token_errors: Optional[Callable[[], Optional[torch.Tensor]]] = None) -> Decision:
        """`token_errors()`: each image token's last measured forecast error [N] (NaN where
        unmeasured), or None; read only when re-ranking by error."""
        new_generation = tick.generation != self.generation
        if new_generation:
            self.warmup_latents, self.analysis, self.grid, self.analysed = [], None, None, False
            self.no_analysis = None
            self.rerank_due, self.reranks, self.periods = False, 0, None
            self.generation = tick.generation
        self.call_in_step = tick.call_in_step
        step = tick.step
        branch = branch_of_tick(tick, branch_name)
        phase = step_phase(step, None, self.config)
        if phase.level != Level.FULL and not self.analysed:
            if self.config.num_inference_steps is None and not self.warned_no_length:
                # said when the first step that may skip work comes, not before: a user who
                # takes over with set_active() after a full call never needs the length
                log.warning("jano: num_inference_steps is unknown, so no cool-down steps can be "
                            "placed; pass options={'num_inference_steps': N} or use "
                            "jano_compile.enable(pipe)")
                self.warned_no_length = True
            self._analyze()
        if self.config.work is not None:
            # the due sets change with every assignment: static shapes take bucketed lengths
            index, phase = self._due_regions(step, phase, token_errors)
            return Decision(step, branch, phase, index, new_generation, time=tick.time, exact=False)
        if phase.level == Level.FULL:
            self.rerank_due = self.config.levels_from == "error"
        elif self.rerank_due and self.analysis is not None and token_errors is not None:
            self._rerank(token_errors())
        if phase.level == Level.FULL or self.all_full:
            index = None
        elif phase.level == Level.NONE and (self.analysis is not None or not self.config.uses_regions):
            index = NO_TOKENS       # a step that computes no token needs no regions
        elif self.analysis is None:
            index = None
        elif phase.level == Level.MEDIUM:
            index = self.analysis.medium_index
        else:
            index = self.analysis.active_index
        return Decision(step, branch, phase, index, new_generation, time=tick.time)

    def _due_regions(self, step: int, phase: Phase, token_errors) -> tuple:
        """Work budget: (index or None for every token, phase) of `step` under the
        per-region periods; after a full step the periods are assigned again from the
        errors it measured (every token's, at the horizon of its period)."""
        if phase.level == Level.FULL or self.analysis is None or self.all_full:
            self.rerank_due = True
            return None, phase
        if self.periods is None:
            self.periods = RegionPeriods(self.analysis.grid, self.analysis.block_size, self._budget(),
                                         prior=self.analysis.block_scores.flatten(), periods=self._periods())
        if self.rerank_due and token_errors is not None:
            self.rerank_due = False
            errors = token_errors()
            if errors is not None and errors.numel() == self.analysis.num_tokens:
                self.periods.observe(errors)
                self.periods.token_periods = None      # assigned again below
        if self.periods.token_periods is None:
            self.periods.assign()
            self.reranks = self.periods.assignments
            self._save_region_map(f"_periods{self.reranks:02d}", of_periods=True)
        index = self.periods.due(step - self.config.warmup_steps)
        if index.numel() == self.analysis.num_tokens:
            self.rerank_due = True
            return None, Phase.REFRESH
        return index, (Phase.SKIP if index.numel() == 0 else Phase.ACTIVE)

    def _budget(self) -> float:
        """The per-step budget of the periodic steps for `config.work`, clamped to what
        the periods can do (with a warning, once, when the request is out of reach)."""
        config = self.config
        budget = adaptive_budget(config.work, config.num_inference_steps, config.warmup_steps,
                                 config.cooldown_steps)
        periods = self._periods()
        lowest, highest = periodic_work_range(None, periods)    # the periods' cycle means: the clamp
        steps = config.num_inference_steps
        free = None if steps is None else periodic_steps(steps, config.warmup_steps, config.cooldown_steps)
        least, most = periodic_work_range(free, periods)     # what this generation's stretch can do
        if not self.warned_budget and budget < least - 1e-9:
            log.warning("jano: work=%g is out of reach: the full steps (warm-up, cool-down, the two "
                        "after warm-up) and every region at the longest period offered (%d steps) "
                        "already take more; every region gets that period (a longer one in `periods` "
                        "does less work)", config.work, max(periods))
            self.warned_budget = True
        elif not self.warned_budget and budget > most + 1e-9:
            log.warning("jano: work=%g is more than the periods can use: the shortest period offered "
                        "(%d steps) computes each region every %d steps; every region gets it (a shorter "
                        "one in `periods` uses the budget)", config.work, min(periods), min(periods))
            self.warned_budget = True
        return min(max(budget, lowest), highest)

    def _periods(self) -> tuple:
        return tuple(sorted(self.config.periods or PERIODS))

    def wants_latents(self, decision: Decision) -> bool:
        return (decision.phase == Phase.WARMUP and self.call_in_step == 0
                and len(self.warmup_latents) == decision.step)

    def record_latents(self, tokens: torch.Tensor, grid: tuple) -> None:
        self.warmup_latents.append(tokens.detach().float().cpu())
        self.grid = grid

    def _rerank(self, errors: Optional[torch.Tensor]) -> None:
        self.rerank_due = False
        if errors is None or errors.numel() != self.analysis.num_tokens:
            return
        self.analysis = rerank_by_error(self.analysis, errors)
        self.reranks += 1
        self._save_region_map(f"_rerank{self.reranks:02d}")

    def _analyze(self) -> None:
        self.analysed = True
        shapes = sorted({tuple(x.shape) for x in self.warmup_latents})
        if len(self.warmup_latents) < 2 or self.grid is None or len(shapes) > 1:
            why = (f"{len(self.warmup_latents)} warm-up latents recorded" if len(shapes) < 2 else
                   f"the warm-up latents differ in shape, {shapes}: the batch changed between steps")
            if self.config.uses_regions:
                log.warning("jano: no region analysis (%s); computing every token", why)
            else:
                log.info("jano: no region analysis (%s); each step computes every token or none, which "
                         "needs none", why)
            self.analysis, self.warmup_latents, self.no_analysis = None, [], why
            return
        self.analysis = analyze(self.warmup_latents, self.grid, self.config)
        log.info("jano: regions %.0f%% active, %.0f%% medium, %.0f%% static (analysis %.3f s)",
                 100 * self.analysis.active_fraction, 100 * self.analysis.medium_fraction,
                 100 * self.analysis.static_fraction, self.analysis.elapsed_s)
        self.warmup_latents = []
        self._save_region_map("")

    def _save_region_map(self, suffix: str, of_periods: bool = False) -> None:
        """With `save_dir`: the levels as a PNG, `region_map_<generation><suffix>.png` (one
        for the warm-up analysis, one per re-ranking by error, one per period assignment,
        `of_periods`: red period 1, yellow 2, blue longer)."""
        if self.config.save_dir:
            os.makedirs(self.config.save_dir, exist_ok=True)
            path = os.path.join(self.config.save_dir, f"region_map_{self.generation:03d}{suffix}.png")
            levels = self.periods.levels().view(self.grid) if of_periods else \
                region_map(self.analysis, self.grid)
            render_region_map(levels).save(path)
            log.info("jano: wrote %s", path)
