"""JanoConfig validation, default block size, presets and option precedence."""

import dataclasses
import math

import pytest
from hypothesis import given, settings, strategies as st

from jano_compile.config import (CONFIG_FIELDS, PRESETS, RECIPES, JanoConfig, default_block_size,
                                 resolve_config)


def test_paper_recipe_matches_the_reference():
    config = JanoConfig(recipe="paper")
    assert (config.warmup_steps, config.cooldown_steps) == (6, 4)
    assert (config.static_interval, config.medium_interval, config.active_interval) == (10, 5, 1)
    assert config.reuse == "hold"
    assert (config.static_thresh, config.medium_thresh) == (0.2, 0.3)
    assert (config.t_weight, config.d_strength, config.d_distance) == (0.7, 0.8, 2)
    assert config.block_size is None and config.num_inference_steps is None
    assert config.save_dir is None and config.threshold_mode == "quantile"


def test_default_recipe_forecasts_every_token_on_a_uniform_period():
    config = JanoConfig()
    assert config.recipe == "forecast" and config.reuse == "forecast" and config.forecast_order == 1
    assert config.static_interval == config.medium_interval == config.active_interval == 3
    assert (config.warmup_steps, config.cooldown_steps) == (3, 1)


@pytest.mark.parametrize("field, overrides", [
    ("warmup_steps", dict(warmup_steps=-1)),
    ("warmup_steps", dict(warmup_steps=1)),
    ("warmup_steps", dict(warmup_steps=2.0)),
    ("warmup_steps", dict(warmup_steps=True)),
    ("cooldown_steps", dict(cooldown_steps=-2)),
    ("static_interval", dict(static_interval=0)),
    ("medium_interval", dict(medium_interval=-5)),
    ("static_thresh", dict(static_thresh=-0.1)),
    ("static_thresh", dict(static_thresh=float("nan"))),
    ("medium_thresh", dict(medium_thresh=1.5)),
    ("static_thresh", dict(static_thresh=0.5, medium_thresh=0.3)),
    ("t_weight", dict(t_weight=1.2)),
    ("t_weight", dict(t_weight="0.5")),
    ("d_strength", dict(d_strength=-0.5)),
    ("d_distance", dict(d_distance=-1)),
    ("block_size", dict(block_size=(0, 4, 4))),
    ("block_size", dict(block_size=(4, 4))),
    ("block_size", dict(block_size=(1, 2.5, 4))),
    ("threshold_mode", dict(threshold_mode="median")),
    ("static_fraction", dict(static_fraction=1.1)),
    ("medium_fraction", dict(static_fraction=0.7, medium_fraction=0.4)),
    ("num_inference_steps", dict(num_inference_steps=0)),
    ("active_interval", dict(active_interval=0)),
    ("reuse", dict(reuse="keep")),
    ("forecast_order", dict(forecast_order=3)),
    ("recipe", dict(recipe="fast")),
    ("save_dir", dict(save_dir=3)),
])
def test_invalid_value_names_the_field(field, overrides):
    with pytest.raises(ValueError, match=rf"JanoConfig\.{field}="):
        JanoConfig(**overrides)


def test_a_run_too_short_to_skip_work_is_valid_computes_every_step_and_says_so_once(caplog):
    """As a scheduler's short run is: the option and the learned length agree. Too short:
    no step of the plan below full (warm-up 6, then the refresh after warm-up, then
    cool-down 4 leave nothing below 12 steps); said once (a warning), not per generation."""
    import logging
    from jano_compile.adaptive import AdaptiveSchedule
    short = JanoConfig(num_inference_steps=9, warmup_steps=6, cooldown_steps=4)
    assert AdaptiveSchedule(short).all_full
    schedule = AdaptiveSchedule(JanoConfig(warmup_steps=6, cooldown_steps=4))
    with caplog.at_level(logging.WARNING, logger="jano_compile.adaptive"):
        for steps in (9, 10, 11):
            schedule.set_num_inference_steps(steps)
            assert schedule.all_full
    assert sum("leaves no step to skip work" in r.message for r in caplog.records) == 1
    schedule.set_num_inference_steps(12)
    assert not schedule.all_full


def test_periods_must_not_repeat():
    with pytest.raises(ValueError, match=r"JanoConfig\.periods=\(2, 2, 4\): must not repeat"):
        JanoConfig(work=0.5, periods=(2, 2, 4))


def test_recipe_value_named_where_it_blocks_a_setting():
    with pytest.raises(ValueError, match=r"reuse='hold' is what recipe='paper' uses"):
        JanoConfig(recipe="paper", forecast_kv=True)


def test_work_replaces_the_family_presets_intervals():
    """The paper recipe's FLUX preset sets intervals; an explicit work budget replaces them
    (explicit option > preset) instead of failing on intervals the user never gave."""
    config = resolve_config("flux", {"recipe": "paper", "reuse": "forecast", "work": 0.4})
    assert config.work == 0.4 and config.warmup_steps == PRESETS["paper"]["flux"]["warmup_steps"]
    with pytest.raises(ValueError, match="replaces"):
        resolve_config("flux", {"work": 0.4, "static_interval": 7})


def test_edge_values_are_valid():
    JanoConfig(num_inference_steps=4)  # warm-up + cool-down == run: all steps full
    JanoConfig(static_thresh=0, medium_thresh=0, static_fraction=1, medium_fraction=0)
    JanoConfig(static_thresh=1.0, medium_thresh=1.0, d_distance=0, cooldown_steps=0)


def test_config_is_frozen_and_replace_revalidates():
    config = JanoConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.warmup_steps = 4
    with pytest.raises(ValueError, match="medium_interval"):
        dataclasses.replace(config, medium_interval=0)


def test_values_are_normalised():
    config = JanoConfig(block_size=[1, 4, 4], t_weight=0)
    assert config.block_size == (1, 4, 4) and isinstance(config.t_weight, float)


def test_block_larger_than_grid_is_rejected():
    config = JanoConfig(block_size=(1, 8, 8))
    config.check_block_size((1, 8, 16))
    with pytest.raises(ValueError, match=r"block_size.*h size 8"):
        config.check_block_size((1, 4, 16))
    with pytest.raises(ValueError, match=r"block_size.*frames size 2"):
        JanoConfig(block_size=(2, 2, 2)).block_size_for((1, 4, 4))
    with pytest.raises(ValueError, match="token grid"):
        config.check_block_size((1, 0, 8))


def test_default_block_size_matches_the_reference_on_flux():
    assert default_block_size((1, 64, 64)) == (1, 4, 4)  # 8x8 latent pixels, 16x16 blocks
    assert JanoConfig().block_size_for((1, 64, 64)) == (1, 4, 4)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 200), st.integers(1, 200))
def test_default_block_size_fits_and_gives_about_16_blocks(frames, height, width):
    block = default_block_size((frames, height, width))
    assert all(1 <= b <= g for b, g in zip(block, (frames, height, width)))
    side = max(block[1:])  # square in (h, w) where the grid allows
    assert block[1:] == (min(height, side), min(width, side))
    longer = max(height, width)
    if longer >= 20:
        assert 10 <= math.ceil(longer / max(block[1:])) <= 21
    JanoConfig(block_size=block).check_block_size((frames, height, width))


def test_presets_are_read_only_data():
    paper = PRESETS["paper"]
    assert paper["flux"]["warmup_steps"] == 7 and paper["wan"]["d_distance"] == 1
    with pytest.raises(TypeError):
        paper["flux"]["warmup_steps"] = 1
    for recipe, presets in PRESETS.items():
        for preset in presets.values():
            assert set(preset) <= CONFIG_FIELDS
            assert not {"reuse", "forecast_order", "recipe"} & set(preset)   # read before the family
            JanoConfig(recipe=recipe, **preset)
    for base in RECIPES.values():
        assert set(base) <= CONFIG_FIELDS


def test_resolve_config_precedence():
    flux = resolve_config("FLUX", {"recipe": "paper"})
    assert (flux.warmup_steps, flux.cooldown_steps, flux.static_interval,
            flux.medium_interval) == (7, 2, 12, 4)
    assert (flux.static_thresh, flux.medium_thresh, flux.t_weight) == (0.2, 0.4, 0.0)
    assert flux.d_strength == JanoConfig().d_strength   # in no preset: default
    assert flux.reuse == "hold"                         # from the paper recipe's base
    explicit = resolve_config("flux", {"recipe": "paper", "warmup_steps": 9, "d_distance": 3})
    assert (explicit.warmup_steps, explicit.d_distance, explicit.cooldown_steps) == (9, 3, 2)
    wan = resolve_config("wan", {"recipe": "paper", "medium_thresh": 0.5})
    assert (wan.medium_thresh, wan.d_distance, wan.t_weight) == (0.5, 1, 0.7)
    assert resolve_config(None, None) == JanoConfig()
    assert resolve_config("flux", {}) == JanoConfig()   # the forecast recipe has no presets
    assert resolve_config("pixart", {"recipe": "paper"}) == JanoConfig(recipe="paper")


def test_resolve_config_rejects_unknown_keys_listing_valid_ones():
    with pytest.raises(ValueError, match=r"warmup_step'\].*valid:.*'warmup_steps'"):
        resolve_config("flux", {"warmup_step": 3})
    with pytest.raises(ValueError, match="JanoConfig.cooldown_steps"):
        resolve_config("flux", {"cooldown_steps": -1})


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([None, "flux", "wan"]),
       st.fixed_dictionaries({}, optional={
           "recipe": st.sampled_from(sorted(RECIPES)),
           "warmup_steps": st.integers(2, 10), "cooldown_steps": st.integers(0, 5),
           "static_interval": st.integers(1, 20), "medium_interval": st.integers(1, 20),
           "t_weight": st.floats(0, 1), "d_distance": st.integers(0, 4)}))
def test_explicit_options_always_win(family, options):
    """An option > the recipe's family preset > the recipe's base > the default."""
    config = resolve_config(family, options)
    recipe = options.get("recipe", "forecast")
    preset = PRESETS[recipe].get(family or "", {})
    default = JanoConfig.__dataclass_fields__
    for name in CONFIG_FIELDS:
        expected = options.get(name, preset.get(name, RECIPES[recipe].get(name, default[name].default)))
        assert getattr(config, name) == expected, name
