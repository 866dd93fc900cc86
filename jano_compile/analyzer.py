"""Jano's early-convergence analysis: which image regions are static, medium or active.

Runs once per generation, at the end of warm-up, on the latents the model received::

    latents  W x [tokens, channels]       tokens = frames * h * w, row-major, frames first
      -> trajectory [W, frames, h, w, channels]
      -> blocks of block_size (frames, h, w), edge blocks smaller
      -> raw block scores [bf, bh, bw]    mean |change| of pairwise distances in the block
                                          between warm-up step i and step i + W // 2
      -> min-max normalised scores in [0, 1]
      -> inward diffusion (enclosed low blocks lifted)
      -> block levels [bf, bh, bw]        0 static, 1 medium, 2 active
      -> token levels [tokens], active_index, medium_index

Here ``bf, bh, bw`` are the numbers of blocks along frames, h and w.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import time
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from .config import JanoConfig, check_grid

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

#: Relative span of the raw scores below which all blocks count as equally dynamic.
UNIFORM_RTOL = 1e-6
#: RGB colour of each region level in rendered maps: static, medium, active.
LEVEL_COLOURS = ((46, 92, 200), (240, 196, 40), (220, 40, 40))


class RegionLevel(enum.IntEnum):
    """Level of a block or token; a step of ``schedule.Level`` L recomputes levels >= L."""

    STATIC = 0
    MEDIUM = 1
    ACTIVE = 2


@dataclasses.dataclass(frozen=True)
class RegionAnalysis:
    """Result of ``analyze`` for one generation.

    Attributes:
        grid: token grid ``(frames, h, w)``.
        block_size: analysis block ``(frames, h, w)`` in tokens.
        base_scores: ``[bf, bh, bw]`` float, min-max normalised scores before inward
            diffusion.
        block_scores: ``[bf, bh, bw]`` float in [0, 1], after inward diffusion; the levels
            come from these.
        block_levels: ``[bf, bh, bw]`` long, ``RegionLevel`` of each block.
        token_levels: ``[tokens]`` long, ``RegionLevel`` of each image token.
        active_index: ``[n_active]`` long, sorted positions of level-2 tokens.
        medium_index: ``[n_medium]`` long, sorted positions of tokens of level >= 1
            (contains ``active_index``).
        elapsed_s: wall time of the analysis in seconds.
    """

    grid: tuple[int, int, int]
    block_size: tuple[int, int, int]
    base_scores: torch.Tensor
    block_scores: torch.Tensor
    block_levels: torch.Tensor
    token_levels: torch.Tensor
    active_index: torch.Tensor
    medium_index: torch.Tensor
    elapsed_s: float

    @property
    def num_tokens(self) -> int:
        return self.token_levels.numel()

    @property
    def active_fraction(self) -> float:
        """Fraction of image tokens that are active."""
        return self.active_index.numel() / max(self.num_tokens, 1)

    @property
    def medium_fraction(self) -> float:
        """Fraction of image tokens that are medium (level 1 exactly)."""
        return (self.medium_index.numel() - self.active_index.numel()) / max(self.num_tokens, 1)

    @property
    def static_fraction(self) -> float:
        """Fraction of image tokens that are static."""
        return 1.0 - self.medium_index.numel() / max(self.num_tokens, 1)


def analyze(latents: Sequence[torch.Tensor], grid: tuple[int, int, int],
            config: JanoConfig) -> RegionAnalysis:
    """Score and level the regions of the token grid from the warm-up latents.

    Args:
        latents: the ``W >= 2`` latents the model received during warm-up, each
            ``[tokens, channels]`` (image tokens only, row-major over ``grid``, frames
            first) or ``[batch, tokens, channels]`` (the batch is folded into channels).
        grid: ``(frames, h, w)`` with ``frames * h * w == tokens``.
        config: ``block_size`` (``None``: ``default_block_size``), ``t_weight``,
            ``d_strength``, ``d_distance`` and the threshold mode with its thresholds or
            fractions.

    Deterministic; scaling all latents by one positive constant leaves the levels
    unchanged (up to float rounding at exact thresholds).
    """
    start = time.perf_counter()
    grid = check_grid(grid)
    block = config.block_size_for(grid)
    trajectory = _trajectory(latents, grid)
    raw = block_dynamics(trajectory, block, config.t_weight)
    base = normalise_scores(raw)
    scores = enhance_enclosed(base, config.d_strength, config.d_distance)
    if config.threshold_mode == "fixed":
        block_levels = levels_by_threshold(scores, config.static_thresh, config.medium_thresh)
    else:
        block_levels = levels_by_fraction(scores, block_token_counts(grid, block),
                                          config.static_fraction, config.medium_fraction)
    token_levels = expand_blocks(block_levels, block, grid).reshape(-1)
    analysis = RegionAnalysis(
        grid=grid, block_size=block, base_scores=base, block_scores=scores,
        block_levels=block_levels, token_levels=token_levels,
        active_index=torch.nonzero(token_levels >= RegionLevel.ACTIVE).flatten(),
        medium_index=torch.nonzero(token_levels >= RegionLevel.MEDIUM).flatten(),
        elapsed_s=time.perf_counter() - start,
    )
    logger.debug("jano analysis: grid %s, block %s, static %.3f medium %.3f active %.3f "
                 "in %.4f s", grid, block, analysis.static_fraction,
                 analysis.medium_fraction, analysis.active_fraction, analysis.elapsed_s)
    return analysis


def rerank_by_error(analysis: RegionAnalysis, token_error: torch.Tensor) -> RegionAnalysis:
    """The analysis with its blocks ranked by measured forecast error instead: each block
    scores the mean of its tokens' finite errors (``token_error`` ``[tokens]`` float, NaN
    where unmeasured; a block with none scores highest: nothing is known of it), and the
    levels keep the analysis's token fractions (so the level sizes stay about the same)."""
    start = time.perf_counter()
    grid, block = analysis.grid, analysis.block_size
    per_block = block_nanmean(token_error.float().reshape(grid), block)
    scores = torch.where(torch.isnan(per_block), torch.full_like(per_block, math.inf), per_block)
    block_levels = levels_by_fraction(scores, block_token_counts(grid, block),
                                      analysis.static_fraction, analysis.medium_fraction)
    token_levels = expand_blocks(block_levels, block, grid).reshape(-1)
    return dataclasses.replace(
        analysis, block_scores=scores, block_levels=block_levels, token_levels=token_levels,
        active_index=torch.nonzero(token_levels >= RegionLevel.ACTIVE).flatten(),
        medium_index=torch.nonzero(token_levels >= RegionLevel.MEDIUM).flatten(),
        elapsed_s=time.perf_counter() - start)


def block_nanmean(values: torch.Tensor, block: tuple[int, int, int]) -> torch.Tensor:
    """``[frames, h, w]`` -> ``[bf, bh, bw]``: the mean of each block's non-NaN values."""
    frames, height, width = values.shape
    bf, bh, bw = block
    nf, nh, nw = math.ceil(frames / bf), math.ceil(height / bh), math.ceil(width / bw)
    padded = F.pad(values, (0, nw * bw - width, 0, nh * bh - height, 0, nf * bf - frames),
                   value=math.nan)
    blocks = padded.view(nf, bf, nh, bh, nw, bw).permute(0, 2, 4, 1, 3, 5).reshape(nf, nh, nw, -1)
    return blocks.nanmean(dim=-1)


def block_dynamics(trajectory: torch.Tensor, block: tuple[int, int, int],
                   t_weight: float) -> torch.Tensor:
    """Raw dynamics of each block, ``[W, frames, h, w, C] -> [bf, bh, bw]`` (float, >= 0).

    With ``half = W // 2``, the change of a set of points between steps i and i + half is
    the mean over point pairs ``p != q`` of ``| |x[i+half, p] - x[i+half, q]| -
    |x[i, p] - x[i, q]| |`` (Euclidean over channels), averaged over ``i = 0 .. W-half-1``.

    * spatial: points = positions of the block in one frame, averaged over its frames;
    * temporal: points = frames of the block at one position, averaged over positions.

    A block's score is ``t_weight * temporal + (1 - t_weight) * spatial``; a block with
    pairs of only one kind (one frame: images, or a 1x1 spatial extent) uses that kind, a
    block with no pair at all gets NaN (``normalise_scores`` makes it active).
    """
    steps, frames, height, width, channels = trajectory.shape
    bf, bh, bw = block
    nf, nh, nw = math.ceil(frames / bf), math.ceil(height / bh), math.ceil(width / bw)
    padded = F.pad(trajectory, (0, 0, 0, nw * bw - width, 0, nh * bh - height,
                                0, nf * bf - frames))
    valid = torch.zeros(nf * bf, nh * bh, nw * bw, dtype=torch.bool, device=trajectory.device)
    valid[:frames, :height, :width] = True
    # [W, nf, bf, nh, bh, nw, bw, C] -> [W, blocks, bf, bh * bw, C]
    points = (padded.view(steps, nf, bf, nh, bh, nw, bw, channels)
              .permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(steps, nf * nh * nw, bf, bh * bw, channels))
    valid = valid.view(nf, bf, nh, bh, nw, bw).permute(0, 2, 4, 1, 3, 5).reshape(-1, bf, bh * bw)
    spatial, has_spatial = _pairwise_change(points, valid)
    temporal, has_temporal = _pairwise_change(points.transpose(2, 3), valid.transpose(1, 2))
    mixed = t_weight * temporal + (1.0 - t_weight) * spatial
    nan = torch.full_like(mixed, float("nan"))
    raw = torch.where(has_spatial & has_temporal, mixed,
                      torch.where(has_spatial, spatial, torch.where(has_temporal, temporal, nan)))
    return raw.view(nf, nh, nw)


def normalise_scores(raw: torch.Tensor) -> torch.Tensor:
    """Min-max normalise raw block scores ``[bf, bh, bw]`` to [0, 1].

    Scale invariant: no additive epsilon. If the finite scores span less than
    ``UNIFORM_RTOL`` of their maximum, every block moves alike: all 1 (nothing can safely
    be frozen), or all 0 when nothing moves at all. NaN (unmeasurable) blocks get 1.
    """
    finite = torch.isfinite(raw)
    if not finite.any():
        return torch.ones_like(raw)
    low, high = raw[finite].min(), raw[finite].max()
    span = high - low
    if span <= UNIFORM_RTOL * high:
        scores = torch.full_like(raw, 1.0 if high > 0 else 0.0)
    else:
        scores = ((raw - low) / span).clamp(0.0, 1.0)
    return torch.where(finite, scores, torch.ones_like(scores))


def enhance_enclosed(scores: torch.Tensor, d_strength: float, d_distance: int) -> torch.Tensor:
    """Inward diffusion: lift blocks enclosed by higher-scoring blocks, ``[bf, bh, bw]``.

    Rule (in the h, w plane of each frame block): for each of the four directions up,
    down, left, right, the *wall* is the highest score among the ``d_distance`` blocks
    along that ray (a ray leaving the grid sees nothing: the border is open). A block is
    enclosed when all four walls are higher than its score; it is then lifted toward the
    lowest wall: ``s + d_strength * (min(walls) - s)``. Computed from the input scores in
    one pass (no cascade), so the result stays in [0, 1] and the interior of a moving
    object within ``d_distance`` blocks of its outline is not frozen, while a region open
    to the border or to a lower region on any side keeps its score.
    """
    if d_strength == 0 or d_distance == 0:
        return scores.clone()
    _, nh, nw = scores.shape
    d = d_distance
    padded = F.pad(scores, (d, d, d, d), value=float("-inf"))
    walls = []
    for dh, dw in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ray = [padded[:, d + k * dh: d + k * dh + nh, d + k * dw: d + k * dw + nw]
               for k in range(1, d + 1)]
        walls.append(torch.stack(ray).amax(0))
    wall = torch.stack(walls).amin(0)
    return torch.where(wall > scores, scores + d_strength * (wall - scores), scores)


def levels_by_threshold(scores: torch.Tensor, static_thresh: float,
                        medium_thresh: float) -> torch.Tensor:
    """Fixed mode: static below ``static_thresh``, active from ``medium_thresh`` up, medium
    in between; ``[bf, bh, bw]`` float -> long. Thresholds 0, 0 make every block active."""
    return (scores >= static_thresh).long() + (scores >= medium_thresh).long()


def levels_by_fraction(scores: torch.Tensor, block_tokens: torch.Tensor,
                       static_fraction: float, medium_fraction: float) -> torch.Tensor:
    """Quantile mode: levels by target token fractions; ``[bf, bh, bw]`` float -> long.

    Blocks are ranked by score (ties by block position, row-major). The lowest-ranked
    blocks are static up to the prefix whose token count is nearest to
    ``static_fraction * tokens``; the next, up to the prefix nearest to
    ``(static_fraction + medium_fraction) * tokens``, are medium; the rest active. Each
    fraction is thus hit within one block's tokens. ``block_tokens`` ``[bf, bh, bw]``
    counts the tokens of each (possibly smaller edge) block.
    """
    order = torch.sort(scores.flatten(), stable=True).indices
    cumulative = F.pad(block_tokens.flatten()[order].cumsum(0), (1, 0)).double()
    total = cumulative[-1]
    static_end = int(torch.argmin((cumulative - static_fraction * total).abs()))
    medium_end = int(torch.argmin(
        (cumulative - (static_fraction + medium_fraction) * total).abs()))
    ranked = torch.full_like(order, int(RegionLevel.ACTIVE))
    ranked[:static_end] = RegionLevel.STATIC
    ranked[static_end:max(static_end, medium_end)] = RegionLevel.MEDIUM
    levels = torch.empty_like(ranked)
    levels[order] = ranked
    return levels.view(scores.shape)


def block_token_counts(grid: tuple[int, int, int],
                       block: tuple[int, int, int]) -> torch.Tensor:
    """Tokens in each block, ``[bf, bh, bw]`` long (edge blocks may hold fewer)."""
    sizes = [(extent - torch.arange(0, extent, size)).clamp(max=size)
             for extent, size in zip(grid, block)]
    return sizes[0][:, None, None] * sizes[1][None, :, None] * sizes[2][None, None, :]


def region_map(analysis: RegionAnalysis, grid: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``RegionLevel`` of every token as ``[frames, h, w]`` long (``grid`` defaults to the
    analysed one and must match it)."""
    grid = analysis.grid if grid is None else check_grid(grid)
    if grid != analysis.grid:
        raise ValueError(f"grid {grid} does not match the analysed grid {analysis.grid}")
    return analysis.token_levels.view(grid)


def render_region_map(levels: torch.Tensor, image: "Image.Image | None" = None,
                      frame: int | None = None, alpha: float = 0.5,
                      min_size: int = 256) -> "Image.Image":
    """Picture of a region map ``[frames, h, w]`` in ``LEVEL_COLOURS`` (PIL RGB image).

    Without ``image``: the chosen ``frame`` (default: all frames side by side), scaled up
    by nearest neighbour so its longer side is at least ``min_size`` pixels. With an RGB
    ``image``: the map of ``frame`` (default 0) resized to the image and blended over it
    with opacity ``alpha``. Save with ``.save(path)``.
    """
    from PIL import Image

    if levels.dim() != 3:
        raise ValueError(f"region map must be [frames, h, w], got shape {tuple(levels.shape)}")
    if image is not None and frame is None:
        frame = 0
    chosen = levels if frame is None else levels[frame:frame + 1]
    strip = torch.cat(list(chosen.cpu().long()), dim=1)  # [h, frames * w]
    rgb = torch.tensor(LEVEL_COLOURS, dtype=torch.uint8)[strip]  # [h, frames * w, 3]
    picture = Image.fromarray(rgb.numpy())  # uint8 [h, w, 3]: RGB
    if image is not None:
        picture = picture.resize(image.size, Image.NEAREST)
        return Image.blend(image.convert("RGB"), picture, alpha)
    scale = max(1, math.ceil(min_size / max(picture.size)))
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def _trajectory(latents: Sequence[torch.Tensor], grid: tuple[int, int, int]) -> torch.Tensor:
    """``W x [tokens, C]`` or ``W x [B, tokens, C]`` -> ``[W, frames, h, w, C']`` float."""
    if len(latents) < 2:
        raise ValueError(f"analysis needs the latents of at least 2 warm-up steps, "
                         f"got {len(latents)}")
    shape = latents[0].shape
    if any(x.shape != shape for x in latents):
        raise ValueError(f"warm-up latents differ in shape: {[tuple(x.shape) for x in latents]}")
    tokens = math.prod(grid)
    if len(shape) not in (2, 3) or shape[-2] != tokens:
        raise ValueError(f"latents must be [tokens, channels] or [batch, tokens, channels] "
                         f"with tokens = {tokens} for grid {grid}, got {tuple(shape)}")
    stacked = torch.stack(list(latents))
    if stacked.dim() == 4:  # [W, B, N, C] -> [W, N, B * C]
        stacked = stacked.permute(0, 2, 1, 3).reshape(len(latents), tokens, -1)
    dtype = torch.promote_types(stacked.dtype, torch.float32)
    return stacked.to(dtype).view(len(latents), *grid, -1)


def _pairwise_change(points: torch.Tensor,
                     valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean change of pairwise distances, ``[W, blocks, groups, P, C]`` with ``valid``
    ``[blocks, groups, P]`` -> (``[blocks]`` mean over valid pairs and step pairs,
    ``[blocks]`` bool: the block has a pair)."""
    steps, blocks, groups, count, channels = points.shape
    half = steps // 2
    pairs = valid.unsqueeze(-1) & valid.unsqueeze(-2)
    pairs &= ~torch.eye(count, dtype=torch.bool, device=valid.device)
    num_pairs = pairs.sum(dim=(1, 2, 3))
    flat = points.reshape(steps, blocks * groups, count, channels)
    total = torch.zeros(blocks, dtype=points.dtype, device=points.device)
    for i in range(steps - half):
        early = torch.cdist(flat[i], flat[i], compute_mode="donot_use_mm_for_euclid_dist")
        late = torch.cdist(flat[i + half], flat[i + half],
                           compute_mode="donot_use_mm_for_euclid_dist")
        change = (late - early).abs().view(blocks, groups, count, count)
        total += torch.where(pairs, change, 0.0).sum(dim=(1, 2, 3))
    mean = total / (num_pairs.clamp(min=1) * (steps - half)).to(total.dtype)
    return mean, num_pairs > 0


def expand_blocks(block_levels: torch.Tensor, block: tuple[int, int, int],
                  grid: tuple[int, int, int]) -> torch.Tensor:
    """``[bf, bh, bw]`` -> ``[frames, h, w]``: every token takes its block's value."""
    full = block_levels
    for dim, size in enumerate(block):
        full = full.repeat_interleave(size, dim=dim)
    frames, height, width = grid
    return full[:frames, :height, :width].contiguous()
