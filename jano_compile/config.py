"""Jano configuration: the frozen settings of one region-adaptive generation.

``JanoConfig`` holds every knob of the method (warm-up, schedule intervals, analysis
thresholds, inward diffusion, block size). ``PRESETS`` keeps what the reference tuned per
model family as data, and ``resolve_config`` merges them with explicit options::

    resolve_config("flux", {"warmup_steps": 8})   # option > the recipe's FLUX preset > its base > default

Sizes are in tokens of the transformer's patch grid ``(frames, h, w)``; an image model
has ``frames == 1``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from types import MappingProxyType
from typing import Any, Mapping

from jano_compile.passes.forecast import MAX_ORDER as MAX_FORECAST_ORDER
from jano_compile.passes.plan import REUSE_MODES

logger = logging.getLogger(__name__)

THRESHOLD_MODES = ("fixed", "quantile")
LEVEL_SOURCES = ("warmup", "error")

#: Blocks the default block size aims for along the longer side of a frame (the
#: reference: 4x4 tokens on FLUX's 64x64 token grid at 1024x1024).
DEFAULT_BLOCKS_ACROSS = 16
#: Blocks the default block size aims for along time (the reference: 7 of Wan2.1's 21
#: latent frames).
DEFAULT_BLOCKS_IN_TIME = 3


@dataclasses.dataclass(frozen=True)
class JanoConfig:
    """Settings of Jano's warm-up, region analysis and adaptive schedule.

    The defaults are the ``"forecast"`` recipe: after 3 full warm-up steps, every token is
    computed every 3rd step and forecast in between, the last step in full. Chosen on
    calibration seeds of the bundled model (README); ``recipe="paper"`` restores Jano as
    published (held outputs, refresh every 10, medium every 5, active every step, and the
    reference's per-family settings).

    Attributes:
        recipe: ``"forecast"`` (the defaults) or ``"paper"``: which base values and family
            presets fill the fields a user leaves unset (``RECIPES``, ``PRESETS``).
        warmup_steps: first denoising steps computed in full; their latents feed the
            analysis, which compares step ``i`` with step ``i + warmup_steps // 2``, so at
            least 2.
        cooldown_steps: last denoising steps computed in full (needs
            ``num_inference_steps``; without it no cool-down can be placed).
        static_interval: after warm-up, a full refresh every this many steps, the first
            one on the first step after warm-up.
        medium_interval: medium and active tokens are recomputed every this many steps,
            counted from the same start.
        active_interval: active tokens are recomputed every this many steps, counted from
            the same start (1, the paper: every step). A step where no level is due
            computes no image token: its output is the held or forecast one (``reuse``),
            from a small tail graph, without calling the transformer blocks.
        static_thresh: ``"fixed"`` mode: blocks whose normalised score is below this are
            static (level 0).
        medium_thresh: ``"fixed"`` mode: blocks scoring at least ``static_thresh`` and below
            this are medium (level 1); from this score up, active (level 2).
        t_weight: weight of the temporal term in a block's score,
            ``t_weight * temporal + (1 - t_weight) * spatial``; ignored where a block has a
            single frame (images).
        d_strength: inward diffusion: fraction of the gap to the enclosing contour by which
            an enclosed block's score is lifted (0 disables).
        d_distance: inward diffusion: how many blocks away an enclosing contour may lie
            (0 disables).
        block_size: analysis block ``(frames, h, w)`` in tokens, edge blocks may be smaller;
            ``None`` picks about 16 blocks across the longer side of a frame and about 3
            along time (see ``default_block_size``).
        threshold_mode: ``"quantile"`` (default): levels by target token fractions of the
            score distribution (``static_fraction``, ``medium_fraction``), inward diffusion
            still applied before ranking; ``"fixed"``: the reference's thresholds on min-max
            normalised scores. On the bundled model the quantile rule at 40/30 did 52% of the
            token work at PSNR 32.5 dB / SSIM 0.963, the fixed rule 81% (README).
        static_fraction: ``"quantile"`` mode: target fraction of tokens that are static.
        medium_fraction: ``"quantile"`` mode: target fraction of tokens that are medium; the
            rest is active.
        num_inference_steps: steps of the whole generation when known, to place the
            cool-down; ``None`` when unknown.
        reuse: what a token that a step does not compute outputs: ``"hold"`` (its last
            computed output, the paper) or ``"forecast"`` (extrapolated from its own last
            ``forecast_order + 1`` computed outputs, Newton divided differences over the
            scheduler's sigmas where ``enable()`` finds flow-matching ones, else over the step
            index). Read when the graph is rewritten: set it as an option, presets
            do not change it.
        forecast_order: 1 (linear) or 2 (quadratic), for ``reuse="forecast"``.
        forecast_kv: ``reuse="forecast"`` only: the keys and values of tokens a step does not
            compute are extrapolated too (order 1, over each token's last two computations)
            instead of held; costs one more K/V cache. Matters only where steps compute part
            of the tokens (region schedules, ``work=``). Read when the graph is rewritten.
        levels_from: what ranks the regions into levels: ``"warmup"`` (the analysis of the
            warm-up latents, the paper) or ``"error"`` (``reuse="forecast"`` only: after
            every full step, the forecast error each token showed when it was last
            computed, per unit of time, averaged over each region; the warm-up analysis
            still sets the level sizes, and ranks the regions where no error is known).
        work: a work budget in (0, 1]: the fraction of image-token computations of the
            whole generation (warm-up and cool-down included when ``num_inference_steps``
            is known). ``None`` (default): the interval schedule above. Set, it replaces
            the intervals and levels: after warm-up each region gets a refresh period
            from ``periods.PERIODS`` (1, 2, 4, 8 steps), chosen after every full step to
            minimise the expected squared forecast error under the budget from the error
            its tokens showed; the first and the last step after warm-up compute every
            token. Needs ``reuse="forecast"``.
        periods: the refresh periods (steps) a region may get under ``work``; ``None``:
            ``periods.PERIODS``.
        save_dir: directory for the region-map PNG of each generation (and one per
            re-ranking with ``levels_from="error"``: how the levels moved); ``None`` writes none.
    """

    warmup_steps: int = 3
    cooldown_steps: int = 1
    static_interval: int = 3
    medium_interval: int = 3
    active_interval: int = 3
    static_thresh: float = 0.2
    medium_thresh: float = 0.3
    t_weight: float = 0.7
    d_strength: float = 0.8
    d_distance: int = 2
    block_size: tuple[int, int, int] | None = None
    threshold_mode: str = "quantile"
    static_fraction: float = 0.4
    medium_fraction: float = 0.3
    num_inference_steps: int | None = None
    save_dir: str | None = None
    reuse: str = "forecast"
    forecast_order: int = 1
    forecast_kv: bool = False
    levels_from: str = "warmup"
    work: float | None = None
    periods: tuple[int, ...] | None = None
    recipe: str = "forecast"

    def __post_init__(self) -> None:
        if isinstance(self.block_size, (list, tuple)):
            object.__setattr__(self, "block_size", tuple(self.block_size))
        if isinstance(self.periods, list):
            object.__setattr__(self, "periods", tuple(self.periods))
        if isinstance(self.save_dir, os.PathLike):
            object.__setattr__(self, "save_dir", os.fspath(self.save_dir))
        for name in ("static_thresh", "medium_thresh", "t_weight", "d_strength",
                     "static_fraction", "medium_fraction"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field and why."""
        if self.recipe not in RECIPES:
            _fail("recipe", self.recipe, f"must be one of {tuple(RECIPES)}")
        _check_int(self, "warmup_steps", 2, "the analysis compares two warm-up steps")
        _check_int(self, "cooldown_steps", 0)
        _check_int(self, "static_interval", 1)
        _check_int(self, "medium_interval", 1)
        _check_int(self, "active_interval", 1)
        if self.reuse not in REUSE_MODES:
            _fail("reuse", self.reuse, f"must be one of {REUSE_MODES}")
        _check_int(self, "forecast_order", 1)
        if self.forecast_order > MAX_FORECAST_ORDER:
            _fail("forecast_order", self.forecast_order, f"must be <= {MAX_FORECAST_ORDER}")
        if not isinstance(self.forecast_kv, bool):
            _fail("forecast_kv", self.forecast_kv, "must be True or False")
        if self.forecast_kv and self.reuse != "forecast":
            _fail("forecast_kv", self.forecast_kv, 'extrapolates K/V like the outputs, which needs reuse="forecast"'
                  + _set_by_recipe(self, "reuse"))
        if self.levels_from not in LEVEL_SOURCES:
            _fail("levels_from", self.levels_from, f"must be one of {LEVEL_SOURCES}")
        if self.levels_from == "error" and self.reuse != "forecast":
            _fail("levels_from", self.levels_from, 'ranks by forecast error, which needs reuse="forecast"'
                  + _set_by_recipe(self, "reuse"))
        if self.work is not None:
            if isinstance(self.work, bool) or not isinstance(self.work, (int, float)) or not 0 < self.work <= 1:
                _fail("work", self.work, "must be None or a number in (0, 1], the fraction of "
                      "image-token work to do (e.g. 0.5)")
            if self.reuse != "forecast":
                _fail("work", self.work, 'periods are chosen from measured forecast error, which needs '
                      'reuse="forecast"' + _set_by_recipe(self, "reuse"))
        if self.periods is not None and (not isinstance(self.periods, tuple) or not self.periods
                                         or not all(_is_int(p) and p >= 1 for p in self.periods)):
            _fail("periods", self.periods, "must be None or a non-empty tuple of positive ints (steps)")
        if self.periods is not None and len(set(self.periods)) != len(self.periods):
            _fail("periods", self.periods, "must not repeat a period")
        _check_int(self, "d_distance", 0)
        for name in ("static_thresh", "medium_thresh", "t_weight", "d_strength",
                     "static_fraction", "medium_fraction"):
            _check_unit(self, name)
        if self.static_thresh > self.medium_thresh:
            _fail("static_thresh", self.static_thresh,
                  f"must not exceed medium_thresh={self.medium_thresh!r}")
        if self.static_fraction + self.medium_fraction > 1.0:
            _fail("medium_fraction", self.medium_fraction,
                  f"static_fraction + medium_fraction must not exceed 1 "
                  f"(static_fraction={self.static_fraction!r})")
        if self.threshold_mode not in THRESHOLD_MODES:
            _fail("threshold_mode", self.threshold_mode, f"must be one of {THRESHOLD_MODES}")
        if self.block_size is not None:
            block = self.block_size
            if (not isinstance(block, tuple) or len(block) != 3
                    or not all(_is_int(b) and b >= 1 for b in block)):
                _fail("block_size", block, "must be None or three positive ints (frames, h, w)")
        if self.num_inference_steps is not None:   # shorter than warm-up + cool-down: every step full
            _check_int(self, "num_inference_steps", 1)
        if self.save_dir is not None and not isinstance(self.save_dir, str):
            _fail("save_dir", self.save_dir, "must be None, a str or a path")

    @property
    def uses_regions(self) -> bool:
        """Some step computes some regions and not others: a work budget, or intervals under
        which a medium or active step comes (the medium interval not a multiple of the
        static one; the active one a multiple of neither). Otherwise (the forecast recipe's
        3 / 3 / 3) every step computes every token or none, and needs no region analysis."""
        static, medium, active = self.static_interval, self.medium_interval, self.active_interval
        return (self.work is not None or medium % static != 0
                or (active % medium != 0 and active % static != 0))

    def check_block_size(self, grid: tuple[int, int, int]) -> None:
        """Raise ``ValueError`` if ``block_size`` is larger than the token ``grid``."""
        grid = check_grid(grid)
        if self.block_size is None:
            return
        for axis, size, extent in zip(("frames", "h", "w"), self.block_size, grid):
            if size > extent:
                _fail("block_size", self.block_size,
                      f"{axis} size {size} is larger than the token grid {grid}")

    def block_size_for(self, grid: tuple[int, int, int]) -> tuple[int, int, int]:
        """The analysis block ``(frames, h, w)`` for ``grid``: ``block_size`` checked, or
        ``default_block_size(grid)`` when it is ``None``."""
        self.check_block_size(grid)
        return self.block_size if self.block_size is not None else default_block_size(grid)


CONFIG_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(JanoConfig))


def explicit_options(config: "JanoConfig | Mapping[str, Any] | None") -> dict:
    """The settings a user gave, as options: for a ``JanoConfig`` only the fields passed to
    its constructor (the others stay open to a family preset); a mapping as it is.

    >>> explicit_options(JanoConfig(warmup_steps=8))
    {'warmup_steps': 8}

    A config made by ``dataclasses.replace`` counts every field as given.
    """
    if config is None:
        return {}
    if isinstance(config, JanoConfig):
        return {name: getattr(config, name) for name in sorted(config._given)}
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"a Jano config is a JanoConfig or a dict of its fields, got {type(config).__name__}")

#: Base values of each recipe over the ``JanoConfig`` defaults (which are ``"forecast"``).
RECIPES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "forecast": MappingProxyType({}),
    "paper": MappingProxyType(dict(
        warmup_steps=6, cooldown_steps=4, static_interval=10, medium_interval=5,
        active_interval=1, reuse="hold",
    )),
})

#: Per recipe, what was tuned per model family (keys: lower-case family names): for
#: ``"paper"``, what the reference tuned. Families without an entry use the recipe's base.
#: Presets never set ``reuse`` or ``forecast_order`` (the rewrite reads them before the
#: family is known).
PRESETS: Mapping[str, Mapping[str, Mapping[str, Any]]] = MappingProxyType({
    "forecast": MappingProxyType({}),
    "paper": MappingProxyType({
        "flux": MappingProxyType(dict(
            warmup_steps=7, cooldown_steps=2, static_interval=12, medium_interval=4,
            static_thresh=0.2, medium_thresh=0.4, t_weight=0.0,
        )),
        "wan": MappingProxyType(dict(
            warmup_steps=6, cooldown_steps=4, static_thresh=0.2, medium_thresh=0.6,
            t_weight=0.7, d_distance=1,
        )),
    }),
})


#: Settings a work budget replaces (the interval schedule and how it ranks its levels).
REPLACED_BY_WORK = ("static_interval", "medium_interval", "active_interval", "levels_from")


def _set_by_recipe(config: "JanoConfig", name: str) -> str:
    """A clause saying that field `name` holds its recipe's value, where it does (the
    recipe may have set it without the user writing it)."""
    value = getattr(config, name)
    if RECIPES.get(config.recipe, {}).get(name, object()) != value:
        return ""
    return f" ({name}={value!r} is what recipe={config.recipe!r} uses; set {name} to change it)"


def _record_given_fields(cls):
    """Wrap the dataclass `__init__`: the fields a caller passes count as explicit (the
    others may come from a family preset), and those it leaves out take the recipe's base
    value, so that ``JanoConfig(recipe="paper")`` is the paper's configuration."""
    generated_init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}

    @functools.wraps(generated_init)
    def __init__(self, *args, **kwargs):
        given = dict(zip(names, args), **kwargs)
        base = RECIPES.get(given.get("recipe", cls.recipe), {})
        generated_init(self, **{**base, **given})
        object.__setattr__(self, "_given", frozenset(given))
        # fields set away from the recipe's value (dataclasses.replace passes every field
        # as it is, so the comparison is with the value, not with being passed)
        recipe_value = {**defaults, **base}
        replaced = sorted(f for f in REPLACED_BY_WORK if f in given and given[f] != recipe_value[f])
        if self.work is not None and replaced:
            _fail("work", self.work, f"gives every region its own period, which replaces {replaced}: "
                  "set one or the other")

    cls.__init__ = __init__
    return cls


_record_given_fields(JanoConfig)


def resolve_config(family: str | None, options: Mapping[str, Any] | None = None) -> JanoConfig:
    """Build the config of one compiled model.

    Precedence: an explicit entry of ``options``, then ``PRESETS[recipe][family]``, then
    ``RECIPES[recipe]``, then the ``JanoConfig`` default; ``recipe`` is the option's or
    ``"forecast"``. ``family`` is matched case-insensitively; ``None`` or a family without a
    preset uses the recipe's base. Unknown option keys raise ``ValueError`` listing the
    valid ones.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"unknown Jano option(s) {unknown}; valid: {sorted(CONFIG_FIELDS)}")
    recipe = options.get("recipe", JanoConfig.recipe)
    if recipe not in RECIPES:
        _fail("recipe", recipe, f"must be one of {tuple(RECIPES)}")
    preset = PRESETS[recipe].get(family.lower(), {}) if family else {}
    if options.get("work") is not None:   # the budget replaces the preset's interval schedule
        preset = {k: v for k, v in preset.items() if k not in REPLACED_BY_WORK}
    if family and not preset:
        logger.debug("no %s preset for family %s; using the recipe's base", recipe, family)
    return JanoConfig(**{**RECIPES[recipe], **preset, **options})


def check_grid(grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """Return ``grid`` as a tuple ``(frames, h, w)`` of positive ints or raise ``ValueError``."""
    grid = tuple(grid)
    if len(grid) != 3 or not all(_is_int(g) and g >= 1 for g in grid):
        raise ValueError(f"token grid must be three positive ints (frames, h, w), got {grid!r}")
    return grid


def default_block_size(grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """Block ``(frames, h, w)`` giving about 16 blocks across the longer side of a frame
    (square in h, w) and about 3 along time; at least 2 per axis where the grid allows, so
    every block has pairs of positions to compare.

    >>> default_block_size((1, 64, 64)), default_block_size((21, 30, 52))
    ((1, 4, 4), (7, 3, 3))
    """
    frames, height, width = check_grid(grid)
    side = max(2, round(max(height, width) / DEFAULT_BLOCKS_ACROSS))
    time = max(2, round(frames / DEFAULT_BLOCKS_IN_TIME))
    return min(frames, time), min(height, side), min(width, side)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fail(name: str, value: Any, why: str) -> None:
    raise ValueError(f"JanoConfig.{name}={value!r}: {why}")


def _check_int(config: JanoConfig, name: str, minimum: int, why: str = "") -> None:
    value = getattr(config, name)
    if not _is_int(value):
        _fail(name, value, "must be an int")
    if value < minimum:
        _fail(name, value, f"must be >= {minimum}" + (f" ({why})" if why else ""))


def _check_unit(config: JanoConfig, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, float) or not 0.0 <= value <= 1.0:
        _fail(name, value, "must be a number in [0, 1]")
