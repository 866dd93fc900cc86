"""Which of a pipeline's transformers runs each step: pipelines with several denoisers.

Wan 2.2 A14B (`WanPipeline`, `WanImageToVideoPipeline`, `WanVACEPipeline`, `LucyEditPipeline`)
holds two experts: `transformer` for the high-noise steps, `transformer_2` for the rest; its
loop picks `transformer` at timesteps >= `boundary_ratio * scheduler.config.num_train_timesteps`
(the pipeline's config) and `transformer_2` below. enable() compiles each expert with a
controller of its own, and each expert's schedule sees only the steps it runs: its own
warm-up, cool-down and forecast history, as a shorter generation.

The rule is data: a pipeline whose config declares `BOUNDARY_CONFIG` splits at it; a
pipeline with a second expert and no such entry runs it without jano (enable() warns).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

FIRST, SECOND = "transformer", "transformer_2"   # high-noise, low-noise expert
BOUNDARY_CONFIG = "boundary_ratio"


def has_split_rule(pipe) -> bool:
    """The pipeline's config declares where its experts hand over (even as None)."""
    config = getattr(pipe, "config", None)
    return config is not None and BOUNDARY_CONFIG in config


def boundary_timestep(pipe, scheduler) -> Optional[float]:
    """The timestep at and above which `transformer` runs; None: it runs every step."""
    ratio = pipe.config.get(BOUNDARY_CONFIG) if has_split_rule(pipe) else None
    if ratio is None:
        return None
    return ratio * scheduler.config.num_train_timesteps


def expert_names(pipe) -> list[str]:
    """The attributes of `pipe` holding the denoisers its loop calls, high-noise first:
    `transformer`, and `transformer_2` where the config says when it runs."""
    names = [FIRST]
    if has_split_rule(pipe) and pipe.config.get(BOUNDARY_CONFIG) is not None:
        names.append(SECOND)
    return [name for name in names if isinstance(getattr(pipe, name, None), torch.nn.Module)]


def owners(pipe, scheduler, timesteps: Sequence[float]) -> list[str]:
    """The expert (attribute name) that runs each of `timesteps` (one per scheduler step)."""
    boundary = boundary_timestep(pipe, scheduler)
    return [FIRST if boundary is None or t >= boundary else SECOND for t in timesteps]
