"""`jano_compile.enable(pipe)`: Jano on a diffusers pipeline in one line.

    ctl = jano_compile.enable(pipe)             # or enable(pipe, JanoConfig(...)) / dict
    image = pipe(prompt_embeds=..., num_inference_steps=50).images[0]
    print(ctl.stats()); jano_compile.disable(pipe)

It compiles `pipe.transformer` with the jano backend (dynamic=False), and Wan 2.2's second
expert `transformer_2` (experts.py), drives each one's step clock from the scheduler (a
generation starts at `set_timesteps`, which also gives its length; a step ends at
`scheduler.step`: no timestep is read from the device), takes branch names from
`transformer.cache_context("cond"/"uncond")`, and shows each step's level and active
fraction on the pipeline's progress bar. Only instance attributes are set (Python looks
`__call__` up on the type, so the pipeline call itself is left alone); `disable` removes them.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch
from torch._dynamo.eval_frame import OptimizedModule

from .clock import SchedulerClock
from .config import JanoConfig, explicit_options
from .controller import Controller, controller
from .experts import BOUNDARY_CONFIG, SECOND, expert_names, has_split_rule
from .options import parse_options
from .registry import REGISTRY
from .scheduler_drive import Expert, SchedulerDrive

log = logging.getLogger(__name__)

_HANDLE = "_jano_handle"
_NOTHING = object()     # no instance attribute of that name before enable()


@dataclass
class _Handle:
    experts: list           # [Expert], the first's controller is enable()'s
    patched: list          # (object, attribute name, value set, value before or _NOTHING) on instances
    drive: SchedulerDrive  # which the experts' clocks reach weakly

    def __reduce__(self):
        raise TypeError("jano is enabled on this pipeline, whose compiled transformer's graphs and caches "
                        "cannot be copied or pickled: copy the pipeline before jano_compile.enable(), or "
                        "call jano_compile.disable(pipe) first")

    def __deepcopy__(self, memo):
        self.__reduce__()


def enable(pipe, config: Union[JanoConfig, Mapping[str, Any], None] = None,
           lowering: Optional[str] = None, mode: Optional[str] = None,
           options: Optional[Mapping[str, Any]] = None, **compile_kwargs) -> Controller:
    """Compile `pipe.transformer` with Jano; returns its controller. The fields `config` sets
    (for a JanoConfig: those passed to its constructor) win over the family preset, which
    wins over the JanoConfig defaults. The step count comes from the scheduler. `mode`:
    torch.compile's mode ("reduce-overhead": each step a CUDA-graph replay on a GPU).
    `lowering`: "inductor" (the default) or "eager". `options`: backend options besides the
    schedule (`static_shapes`, `static_buckets`, `cuda_graphs`, `dump_dir`, Inductor
    settings; see options.py); a setting given there and as a keyword or in `config` is an
    error. A two-expert pipeline (Wan 2.2: `transformer_2` runs the low-noise steps) gets
    both compiled, each with a controller and schedule of its own over the steps it runs;
    the returned controller is the first's, `jano_compile.controller(pipe.transformer_2)`
    the second's."""
    if getattr(pipe, _HANDLE, None) is not None:
        raise RuntimeError("jano is already enabled on this pipeline; call jano_compile.disable(pipe) first")
    names = expert_names(pipe)
    if not names:
        raise TypeError(f"{type(pipe).__name__} has no `transformer` module to compile")
    for name in names:
        _check_module(name, getattr(pipe, name))
    fixed = sorted(k for k in ("backend", "dynamic") if k in compile_kwargs)
    if fixed:
        raise TypeError(f"jano_compile.enable() sets {' and '.join(fixed)} itself (backend='jano', "
                        "dynamic=False: one static graph per shape, what jano rewrites); leave "
                        f"{' and '.join(fixed)} out")
    if not callable(getattr(getattr(pipe, "scheduler", None), "set_timesteps", None)):
        raise TypeError(f"{type(pipe).__name__} has no scheduler with set_timesteps(): enable() counts the "
                        "steps through it; give the pipeline its scheduler, or compile the transformer with "
                        "torch.compile(..., backend='jano') for a loop of your own")
    _warn_second_transformer(pipe, names)
    options = _merged_options(config, lowering, mode, options)
    controllers = [controller(getattr(pipe, name)) for name in names]
    if any(ctl.auto_policy.scheduler_clock is not None for ctl in controllers):
        raise RuntimeError("this transformer is already enabled on another pipeline (one schedule clock "
                           "per model): call jano_compile.disable() on that pipeline first")
    patched = []
    modules = {name: getattr(pipe, name) for name in names}

    def set_on(obj, name, value):
        patched.append((obj, name, value, obj.__dict__.get(name, _NOTHING)))
        obj.__dict__[name] = value

    try:
        experts = []
        for name, ctl in zip(names, controllers):
            transformer = modules[name]
            compiled = _as_component(torch.compile(transformer, backend="jano", dynamic=False,
                                                   options=options, **compile_kwargs), transformer)
            _name_branches(transformer, ctl, set_on)
            experts.append(Expert(name, transformer, compiled, ctl, SchedulerClock(), ctl.calls))
        drive = SchedulerDrive(pipe, experts, set_on)
        _show_levels(pipe, controllers, set_on)
        _save_overlays(pipe, controllers[0], set_on)
        for expert in experts:
            setattr(pipe, expert.name, expert.compiled)
    except BaseException:      # nothing half-enabled: the pipeline and its models as they were
        _undo(pipe, patched, modules, controllers)
        raise
    setattr(pipe, _HANDLE, _Handle(experts, patched, drive))
    return controllers[0]


class _CompiledComponent(OptimizedModule):
    """torch.compile's wrapper as a pipeline component: truthy (torch 2.13's `__len__`
    raises for a model without a length, and modular pipelines test `if transformer:`)."""

    def __bool__(self) -> bool:
        return True


def _as_component(compiled, transformer):
    """`compiled` (torch.compile of `transformer`) made to stand where the transformer did:
    truthy, and its `forward` with the model's signature (modular pipelines pass the model
    only the inputs its forward names: `(*args, **kwargs)` dropped them all)."""
    if type(compiled) is OptimizedModule:
        compiled.__class__ = _CompiledComponent
    _sign_as(compiled.forward, transformer)
    return compiled


def _sign_as(fn, transformer) -> None:
    """`fn` reports the signature of `transformer.forward` (where a function takes one)."""
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        fn.__signature__ = inspect.signature(transformer.forward)


def _undo(pipe, patched: list, modules: dict, controllers: list) -> None:
    """Take back what enable() set: instance attributes (what was there before comes back),
    the clocks, the pipeline's modules ({name: eager module})."""
    for obj, name, value, before in reversed(patched):
        if obj.__dict__.get(name, _NOTHING) is not value:
            continue            # set again since (another pipeline's enable()): theirs now
        if before is _NOTHING:
            del obj.__dict__[name]
        else:
            obj.__dict__[name] = before
    for ctl in controllers:
        ctl.auto_policy.scheduler_clock = None
    for name, module in modules.items():
        if getattr(pipe, name, None) is not module:
            setattr(pipe, name, module)


def _check_module(name: str, transformer: torch.nn.Module) -> None:
    """`pipe.<name>` must be the plain module, which enable() compiles itself, without
    diffusers' cache hooks."""
    inner = getattr(transformer, "_orig_mod", None)     # torch.compile's wrapper: jano's, if enabled
    shared = REGISTRY.for_module(inner) if inner is not None else None
    if shared is not None and shared.auto_policy.scheduler_clock is not None:
        raise RuntimeError(f"pipe.{name} is the transformer jano is enabled on through another pipeline "
                           "(from_pipe() after enable() shares it): this pipeline runs it with jano already, its "
                           "own scheduler driving the steps; leave enable() out (disable() on the first "
                           "pipeline turns jano off for both)")
    if inner is not None:
        raise TypeError(f"pipe.{name} is already compiled with torch.compile; enable() compiles it "
                        f"itself: give it the module (pipe.{name} = pipe.{name}._orig_mod)")
    if getattr(transformer, "_compiled_call_impl", None) is not None:
        raise TypeError(f"pipe.{name} was compiled in place ({name}.compile()), and its "
                        "compiled call would run instead of jano's; enable() compiles it itself: load "
                        "the transformer again without .compile() (compile_repeated_blocks() is fine)")
    if getattr(transformer, "is_cache_enabled", False) is True:
        cache = type(getattr(transformer, "_cache_config", None)).__name__
        raise ValueError(f"pipe.{name} has diffusers' cache on ({cache}, from enable_cache()): its hooks "
                         "split the model into pieces jano cannot rewrite, and jano does the same job; call "
                         f"pipe.{name}.disable_cache() before enable() (a compile made while the cache was on "
                         "may keep running the pieces: torch._dynamo.reset() after disable_cache() clears it)")


def _warn_second_transformer(pipe, names: list[str]) -> None:
    """A second expert whose steps the pipeline's config does not say (experts.py) runs
    without jano: say so."""
    if SECOND not in names and isinstance(getattr(pipe, SECOND, None), torch.nn.Module) \
            and not has_split_rule(pipe):
        warnings.warn(f"jano: enable() compiles pipe.transformer only; pipe.transformer_2 runs as it is, "
                      f"computing every token: {type(pipe).__name__}'s config has no `{BOUNDARY_CONFIG}` "
                      "saying which steps each transformer runs. jano's schedule counts the whole "
                      "generation, so steps the first runs may be forecast from steps the second ran",
                      stacklevel=3)


def _merged_options(config, lowering: Optional[str], mode: Optional[str],
                    options: Optional[Mapping[str, Any]]) -> dict:
    """The backend options of `enable()`'s arguments, validated now (a bad one fails here,
    not at the first denoising step); a setting given twice is an error."""
    schedule = explicit_options(config)
    options = dict(options or {})
    keywords = {key: value for key, value in (("lowering", lowering), ("mode", mode)) if value is not None}
    both = sorted(set(schedule) & set(options)) + sorted(k for k in keywords if k in options)
    if both:
        raise ValueError(f"jano_compile.enable(): {both} given twice (in the config or as a keyword, and "
                         "in `options`); give each setting once")
    options = {**keywords, **options, **schedule}
    parse_options(None, options)
    return options


def _name_branches(transformer, ctl: Controller, set_on) -> None:
    """`transformer.cache_context("cond")` names the CFG branch of the calls inside it."""
    original_context = getattr(transformer, "cache_context", None)
    if original_context is None:
        return

    @contextlib.contextmanager
    def cache_context(name, **kwargs):
        with ctl.branch(name), original_context(name, **kwargs):
            yield
    set_on(transformer, "cache_context", cache_context)


def _show_levels(pipe, controllers: list, set_on) -> None:
    """The pipeline's progress bar shows each step's level and active fraction (of the
    expert that ran it), and before the model's first call that the first step compiles
    (tens of seconds on a GPU). A modular pipeline's bars belong to its loop blocks."""
    owners = [pipe] if callable(getattr(pipe, "progress_bar", None)) else \
        list(_bar_blocks(getattr(pipe, "_blocks", None), set()))
    for owner in owners:
        _show_levels_on(owner, controllers, set_on)


def _bar_blocks(block, seen: set):
    """The blocks under a modular pipeline's `block` that own a progress bar."""
    if block is None or id(block) in seen:
        return
    seen.add(id(block))
    if callable(getattr(block, "progress_bar", None)):
        yield block
    for sub in (getattr(block, "sub_blocks", None) or {}).values():
        yield from _bar_blocks(sub, seen)


def _show_levels_on(owner, controllers: list, set_on) -> None:
    """`owner.progress_bar` (a pipeline's or a loop block's) wrapped to show the levels."""
    original_progress_bar = owner.progress_bar

    @functools.wraps(original_progress_bar)
    def progress_bar(*args, **kwargs):
        bar = original_progress_bar(*args, **kwargs)
        if all(ctl.auto_policy.scheduler_clock is None for ctl in controllers):
            return bar          # disabled (a loop block copied while enabled keeps this wrapper)
        if all(ctl.calls == 0 for ctl in controllers) and hasattr(bar, "set_postfix"):
            bar.set_postfix(jano="compiling at the first step", refresh=True)
        update = bar.update
        shown = [ctl.last_call for ctl in controllers]

        def update_with_level(n=1):
            latest = [ctl.last_call for ctl in controllers]
            last = next((new for new, old in zip(latest, shown) if new is not old), None)
            shown[:] = latest
            if last is not None and last.phase is not None:
                bar.set_postfix(jano=f"{last.phase} {last.active / max(last.total, 1):.0%}", refresh=False)
            return update(n)
        bar.update = update_with_level
        return bar
    set_on(owner, "progress_bar", progress_bar)


def _save_overlays(pipe, ctl: Controller, set_on) -> None:
    """With `save_dir`, each decoded image gets its region map overlaid (`_save_overlay`)."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "decode"):
        return
    original_decode = vae.decode

    @functools.wraps(original_decode)
    def decode(*args, **kwargs):
        result = original_decode(*args, **kwargs)
        _save_overlay(ctl, result)
        return result
    set_on(vae, "decode", decode)


def _save_overlay(ctl: Controller, decoded) -> None:
    """With `save_dir`, the region map over the first decoded image (first frame of a video)."""
    import os

    from PIL import Image

    from .analyzer import render_region_map
    adaptive = ctl.schedule
    if adaptive is None or adaptive.analysis is None or not adaptive.config.save_dir:
        return
    sample = decoded[0] if isinstance(decoded, (tuple, list)) else getattr(decoded, "sample", decoded)
    image = sample[0].float()
    if image.dim() == 4:                       # [C, F, H, W] video: first frame
        image = image[:, 0]
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    path = os.path.join(adaptive.config.save_dir, f"region_overlay_{adaptive.generation:03d}.png")
    render_region_map(ctl.region_map(), image=Image.fromarray(array)).save(path)


def disable(pipe) -> None:
    """Undo `enable`: the pipeline gets its eager transformer back, and the caches' memory
    is freed. A pipeline that still holds the compiled transformer (made with `from_pipe()`
    after `enable()`) calls the eager transformer through it from then on."""
    handle: Optional[_Handle] = getattr(pipe, _HANDLE, None)
    if handle is None:
        raise RuntimeError("jano is not enabled on this pipeline")
    _undo(pipe, handle.patched, {e.name: e.transformer for e in handle.experts},
          [e.controller for e in handle.experts])
    for expert in handle.experts:
        expert.controller.release()
        # a pipeline made with from_pipe() after enable() holds the compiled transformer too:
        # from now on it calls the eager one (OptimizedModule's forward is an instance attribute)
        expert.compiled.forward = _eager_call(expert.transformer)
    delattr(pipe, _HANDLE)


def _eager_call(transformer):
    """`transformer(...)` under the model's forward signature (what modular pipelines read)."""
    def forward(*args, **kwargs):
        return transformer(*args, **kwargs)
    _sign_as(forward, transformer)
    return forward
