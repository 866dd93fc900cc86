"""Region analysis: properties on synthetic warm-up trajectories (CPU, tiny grids)."""

import dataclasses
import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from jano_compile.analyzer import (RegionLevel, analyze, block_token_counts, enhance_enclosed,
                                   region_map, render_region_map)
from jano_compile.config import JanoConfig

SETTINGS = settings(max_examples=20, deadline=None)
STATIC, MEDIUM, ACTIVE = RegionLevel.STATIC, RegionLevel.MEDIUM, RegionLevel.ACTIVE


def trajectory(amplitude, seed, steps=6, channels=16, noise=0.0):
    """Warm-up latents ``steps x [tokens, channels]``: token p at step s is
    ``base_p * (1 + s * a_p) + noise * a_p * n_{s,p}`` with ``a = amplitude`` ``[f, h, w]``;
    tokens with ``a_p = 0`` are constant over the warm-up."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(*amplitude.shape, channels, generator=generator)
    a = amplitude.unsqueeze(-1)
    return [(base * (1 + step * a) + noise * a * torch.randn(base.shape, generator=generator))
            .reshape(-1, channels) for step in range(steps)]


@st.composite
def grid_and_block(draw, max_frames=3):
    """A token grid and a block fitting it with at least two positions per frame."""
    grid = (draw(st.integers(1, max_frames)), draw(st.integers(2, 12)), draw(st.integers(2, 12)))
    bh = draw(st.integers(1, grid[1]))
    block = (draw(st.integers(1, grid[0])), bh, draw(st.integers(2 if bh == 1 else 1, grid[2])))
    return grid, block


def block_grid(grid, block):
    return tuple(math.ceil(g / b) for g, b in zip(grid, block))


def expand(block_values, grid, block):
    """``[bf, bh, bw]`` -> ``[frames, h, w]``: each token takes its block's value."""
    for dim, size in enumerate(block):
        block_values = block_values.repeat_interleave(size, dim=dim)
    return block_values[:grid[0], :grid[1], :grid[2]]


configs = st.builds(
    JanoConfig,
    static_thresh=st.floats(0.05, 0.5), medium_thresh=st.floats(0.5, 1.0),
    t_weight=st.floats(0, 1), d_strength=st.floats(0, 1), d_distance=st.integers(0, 3),
    threshold_mode=st.sampled_from(["fixed", "quantile"]),
    static_fraction=st.floats(0, 0.6), medium_fraction=st.floats(0, 0.4))


@SETTINGS
@given(grid_and_block(), st.integers(0, 3), st.data(), configs, st.integers(0, 2**16))
def test_constant_region_open_to_the_border_is_static(grid_block, side, data, config, seed):
    """A strip along one side, constant over warm-up while the rest moves, is static."""
    grid, block = grid_block
    config = dataclasses.replace(config, threshold_mode="fixed", block_size=block)
    axis = 1 + side % 2  # 1: strip of rows, 2: strip of columns
    width = data.draw(st.integers(1, grid[axis]))
    amplitude = 0.5 + torch.rand(grid, generator=torch.Generator().manual_seed(seed))
    strip = [slice(None)] * 3
    strip[axis] = slice(0, width) if side < 2 else slice(grid[axis] - width, None)
    amplitude[tuple(strip)] = 0
    analysis = analyze(trajectory(amplitude, seed, noise=0.5), grid, config)
    constant = torch.zeros(grid, dtype=torch.bool)
    constant[tuple(strip)] = True
    blocks = block_grid(grid, block)
    block_ids = expand(torch.arange(math.prod(blocks)).view(blocks), grid, block).flatten()
    all_constant = torch.ones(math.prod(blocks), dtype=torch.bool).scatter_reduce(
        0, block_ids, constant.flatten(), "amin")
    measurable = block_token_counts(grid, block).flatten() >= 2  # two tokens or more
    chosen = (all_constant & measurable)[block_ids].view(grid)
    assume(chosen.any())     # a strip narrower than a block fills no block whole
    assert (region_map(analysis)[chosen] == STATIC).all()


@SETTINGS
@given(grid_and_block(), st.data(), st.integers(0, 2**16))
def test_moving_object_in_still_background_is_active_where_it_moves(grid_block, data, seed):
    grid, block = grid_block
    nf, nh, nw = block_grid(grid, block)
    rows = sorted(data.draw(st.lists(st.integers(0, nh), min_size=2, max_size=2, unique=True)))
    cols = sorted(data.draw(st.lists(st.integers(0, nw), min_size=2, max_size=2, unique=True)))
    object_blocks = torch.zeros(nf, nh, nw)
    object_blocks[:, rows[0]:rows[1], cols[0]:cols[1]] = 1
    measurable_blocks = block_token_counts(grid, block) >= 2  # a 1-token block is kept active
    assume((measurable_blocks & (object_blocks == 0)).any())  # some still background
    moving = expand(object_blocks, grid, block)
    analysis = analyze(trajectory(moving, seed, channels=32), grid, JanoConfig(threshold_mode="fixed", block_size=block))
    levels = region_map(analysis)
    assert (levels[moving.bool()] == ACTIVE).all()
    # a rectangle encloses no background
    assert (levels[~moving.bool() & expand(measurable_blocks, grid, block)] == STATIC).all()


@SETTINGS
@given(grid_and_block(), configs, st.integers(0, 2**16))
def test_levels_partition_the_tokens(grid_block, config, seed):
    grid, block = grid_block
    config = dataclasses.replace(config, block_size=block)
    amplitude = torch.rand(grid, generator=torch.Generator().manual_seed(seed))
    analysis = analyze(trajectory(amplitude, seed, noise=0.3), grid, config)
    levels = analysis.token_levels
    assert levels.shape == (math.prod(grid),) and levels.dtype == torch.long
    assert set(levels.unique().tolist()) <= {0, 1, 2}
    assert torch.equal(analysis.active_index, torch.nonzero(levels == ACTIVE).flatten())
    assert torch.equal(analysis.medium_index, torch.nonzero(levels >= MEDIUM).flatten())
    assert torch.isin(analysis.active_index, analysis.medium_index).all()
    assert math.isclose(analysis.static_fraction + analysis.medium_fraction
                        + analysis.active_fraction, 1.0)
    assert analysis.block_scores.shape == block_grid(grid, block)
    assert torch.equal(region_map(analysis), expand(analysis.block_levels, grid, block))
    assert ((analysis.block_scores >= 0) & (analysis.block_scores <= 1)).all()
    # levels never decrease with the (enhanced) score, in both modes
    scores, block_levels = analysis.block_scores.flatten(), analysis.block_levels.flatten()
    lower = scores[:, None] < scores[None, :]
    assert (block_levels[:, None] <= block_levels[None, :])[lower].all()
    assert analysis.elapsed_s >= 0


@SETTINGS
@given(grid_and_block(), configs, st.integers(-8, 8), st.integers(0, 2**16))
def test_scaling_the_trajectory_by_a_power_of_two_keeps_levels(grid_block, config, exponent, seed):
    grid, block = grid_block
    config = dataclasses.replace(config, block_size=block)
    amplitude = torch.rand(grid, generator=torch.Generator().manual_seed(seed))
    latents = trajectory(amplitude, seed, noise=0.3)
    reference = analyze(latents, grid, config)
    scaled = analyze([x * 2.0 ** exponent for x in latents], grid, config)
    assert torch.equal(reference.token_levels, scaled.token_levels)


@SETTINGS
@given(grid_and_block(), st.floats(1e-3, 1e3), st.integers(0, 2**16))
def test_scaling_by_any_positive_constant_keeps_levels(grid_block, factor, seed):
    """Any factor: equal levels except for float rounding of scores at a threshold."""
    grid, block = grid_block
    config = JanoConfig(threshold_mode="fixed", block_size=block)
    amplitude = torch.rand(grid, generator=torch.Generator().manual_seed(seed))
    latents = trajectory(amplitude, seed, noise=0.3)
    reference = analyze(latents, grid, config)
    scaled = analyze([x * factor for x in latents], grid, config)
    scores = reference.block_scores
    torch.testing.assert_close(scaled.block_scores, scores, atol=1e-4, rtol=0)
    clear = ((scores - config.static_thresh).abs() > 1e-4) & (
        (scores - config.medium_thresh).abs() > 1e-4)
    assert torch.equal(reference.block_levels[clear], scaled.block_levels[clear])


@SETTINGS
@given(grid_and_block(), st.floats(0, 1), st.data(), st.integers(0, 2**16))
def test_quantile_mode_hits_its_fractions_within_one_block(grid_block, static_fraction,
                                                           data, seed):
    grid, block = grid_block
    medium_fraction = data.draw(st.floats(0, 1 - static_fraction))
    config = JanoConfig(block_size=block, threshold_mode="quantile",
                        static_fraction=static_fraction, medium_fraction=medium_fraction)
    amplitude = torch.rand(grid, generator=torch.Generator().manual_seed(seed))
    analysis = analyze(trajectory(amplitude, seed, noise=0.3), grid, config)
    tokens, one_block = math.prod(grid), math.prod(block)
    counts = torch.bincount(analysis.token_levels, minlength=3).tolist()
    assert abs(counts[STATIC] - static_fraction * tokens) <= one_block
    assert abs(counts[MEDIUM] - medium_fraction * tokens) <= one_block


def test_extreme_settings_make_everything_active_or_static():
    grid, block = (1, 8, 8), (1, 2, 2)
    amplitude = torch.rand(grid, generator=torch.Generator().manual_seed(0))
    latents = trajectory(amplitude, 0)
    everything = analyze(latents, grid, JanoConfig(block_size=block, threshold_mode="fixed",
                                                   static_thresh=0, medium_thresh=0))
    assert everything.active_fraction == 1.0
    nothing = analyze(latents, grid, JanoConfig(block_size=block, threshold_mode="quantile",
                                                static_fraction=1.0, medium_fraction=0.0))
    assert nothing.static_fraction == 1.0 and nothing.medium_index.numel() == 0


def test_still_trajectory_is_static_and_uniform_motion_is_active():
    grid = (1, 8, 8)
    still = analyze(trajectory(torch.zeros(grid), 0), grid, JanoConfig(threshold_mode="fixed"))
    assert still.static_fraction == 1.0
    uniform = [torch.full((64, 4), float(step)) for step in range(6)]  # moves, no contrast
    assert analyze(uniform, grid, JanoConfig(threshold_mode="fixed")).static_fraction == 1.0  # distances unchanged
    spread = [x * (1 + step) for step, x in enumerate(trajectory(torch.zeros(grid), 0))]
    assert analyze(spread, grid, JanoConfig(threshold_mode="fixed", block_size=(1, 8, 8))).active_fraction == 1.0


def test_enclosed_interior_is_lifted():
    ring = torch.zeros(1, 5, 5)
    ring[0, 1:4, 1:4] = 1.0
    ring[0, 2, 2] = 0.0
    lifted = enhance_enclosed(ring, d_strength=0.8, d_distance=1)
    assert lifted[0, 2, 2].item() == pytest.approx(0.8)
    torch.testing.assert_close(lifted[ring > 0], ring[ring > 0])
    assert (lifted[0, 0] == 0).all()  # the border is open: nothing outside the ring moves
    # a wider ring needs a longer reach
    wide = torch.zeros(1, 7, 7)
    wide[0, 1:6, 1:6] = 1.0
    wide[0, 2:5, 2:5] = 0.0
    assert enhance_enclosed(wide, 0.8, 1)[0, 3, 3] == 0
    assert enhance_enclosed(wide, 0.8, 2)[0, 3, 3] == pytest.approx(0.8)
    # a U open on one side lifts nothing
    cup = ring.clone()
    cup[0, 1, 2] = 0.0
    assert enhance_enclosed(cup, 0.8, 2)[0, 2, 2] == 0
    # the lift goes toward the lowest wall
    uneven = ring.clone()
    uneven[0, 1, 2] = 0.5
    assert enhance_enclosed(uneven, 0.5, 1)[0, 2, 2].item() == pytest.approx(0.25)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.floats(0, 1),
       st.integers(0, 4), st.integers(0, 2**16))
def test_inward_diffusion_only_lifts_within_bounds(nf, nh, nw, strength, distance, seed):
    scores = torch.rand(nf, nh, nw, generator=torch.Generator().manual_seed(seed))
    lifted = enhance_enclosed(scores, strength, distance)
    assert (lifted >= scores).all() and (lifted <= scores.max()).all()
    border = torch.ones_like(scores, dtype=torch.bool)
    border[:, 1:-1, 1:-1] = False
    assert torch.equal(lifted[border], scores[border])
    if strength == 0 or distance == 0:
        assert torch.equal(lifted, scores)


def test_moving_ring_keeps_its_still_inside_from_freezing():
    grid, block = (1, 10, 10), (1, 2, 2)
    ring = torch.zeros(5, 5)
    ring[1:4, 1:4] = 1
    ring[2, 2] = 0  # still interior block, enclosed by the moving outline
    moving = expand(ring.unsqueeze(0), grid, block)
    latents = trajectory(moving, 3, channels=32)
    inside = region_map(analyze(latents, grid, JanoConfig(threshold_mode="fixed", block_size=block)))[0, 4:6, 4:6]
    assert (inside == ACTIVE).all()
    frozen = analyze(latents, grid, JanoConfig(threshold_mode="fixed", block_size=block, d_strength=0))
    assert (region_map(frozen)[0, 4:6, 4:6] == STATIC).all()


def test_video_temporal_term_sees_motion_between_frames():
    """Positions whose frames drift apart over warm-up are found by the temporal term."""
    grid, block = (4, 4, 4), (4, 2, 2)
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(*grid, 8, generator=generator)
    drift = torch.zeros(grid)
    drift[:, :2, :2] = torch.arange(4.0).view(4, 1, 1)  # later frames drift further
    latents = [(base + step * drift.unsqueeze(-1)).reshape(-1, 8) for step in range(6)]
    levels = region_map(analyze(latents, grid, JanoConfig(threshold_mode="fixed", block_size=block, t_weight=1.0)))
    assert (levels[:, :2, :2] == ACTIVE).all() and (levels[:, 2:, 2:] == STATIC).all()


def test_batched_latents_fold_into_channels_and_analysis_is_deterministic():
    grid = (1, 6, 6)
    amplitude = torch.rand(grid, generator=torch.Generator().manual_seed(1))
    latents = trajectory(amplitude, 1, noise=0.3)
    config = JanoConfig(threshold_mode="fixed", block_size=(1, 2, 2))
    single = analyze(latents, grid, config)
    batched = analyze([x.unsqueeze(0) for x in latents], grid, config)
    assert torch.equal(single.block_scores, batched.block_scores)
    assert torch.equal(single.token_levels, analyze(latents, grid, config).token_levels)
    low_precision = analyze([x.bfloat16() for x in latents], grid, config)
    assert low_precision.block_scores.dtype == torch.float32


def test_invalid_inputs_raise():
    latents = trajectory(torch.rand(1, 4, 4), 0)
    with pytest.raises(ValueError, match="at least 2"):
        analyze(latents[:1], (1, 4, 4), JanoConfig(threshold_mode="fixed"))
    with pytest.raises(ValueError, match="tokens = 20"):
        analyze(latents, (1, 4, 5), JanoConfig(threshold_mode="fixed"))
    with pytest.raises(ValueError, match="block_size"):
        analyze(latents, (1, 4, 4), JanoConfig(threshold_mode="fixed", block_size=(1, 8, 8)))
    with pytest.raises(ValueError, match="differ in shape"):
        analyze([latents[0], latents[1][:8]], (1, 4, 4), JanoConfig(threshold_mode="fixed"))


def test_block_token_counts_cover_the_grid():
    counts = block_token_counts((3, 5, 7), (2, 2, 3))
    assert counts.shape == (2, 3, 3) and counts.sum() == 3 * 5 * 7
    assert counts[0, 0, 0] == 12 and counts[-1, -1, -1] == 1


def test_render_region_map():
    from PIL import Image

    from jano_compile.analyzer import LEVEL_COLOURS
    static, medium, active = LEVEL_COLOURS
    assert len({static, medium, active}) == 3
    levels = torch.tensor([[[0, 1], [2, 2]], [[0, 0], [1, 2]]])
    strip = render_region_map(levels, min_size=64)
    assert strip.size == (64, 32) and strip.mode == "RGB"  # frames side by side
    assert strip.getpixel((0, 0)) == static and strip.getpixel((63, 31)) == active
    assert strip.getpixel((16, 0)) == medium
    overlay = render_region_map(levels, image=Image.new("RGB", (40, 30)), frame=1, alpha=1.0)
    assert overlay.size == (40, 30) and overlay.getpixel((39, 29)) == active
