"""`jano_compile.enable(pipe)`: Jano on a diffusers pipeline in one line.

    ctl = jano_compile.enable(pipe)             # or enable(pipe, JanoConfig(...)) / dict
    image = pipe(prompt_embeds=..., num_inference_steps=50).images[0]
    print(ctl.stats()); jano_compile.disable(pipe)

It compiles `pipe.transformer` with the jano backend (dynamic=False), drives the step clock
from the scheduler (a generation starts at `set_timesteps`, which also gives its length;
a step ends at `scheduler.step`: no timestep is read from the device), takes branch names
from `transformer.cache_context("cond"/"uncond")`, and shows each step's level and active
fraction on the pipeline's progress bar. Only instance attributes are set (Python looks
`__call__` up on the type, so the pipeline call itself is left alone); `disable` removes them.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union

import torch

from .call_site import calling_self, warn_user
from .clock import SchedulerClock, evaluations
from .config import JanoConfig, explicit_options
from .controller import Controller, controller
from .options import parse_options
from .registry import REGISTRY

log = logging.getLogger(__name__)

_HANDLE = "_jano_handle"


@dataclass
class _Handle:
    transformer: torch.nn.Module
    compiled: torch.nn.Module     # torch.compile's wrapper of `transformer`
    controller: Controller
    patched: list          # (object, attribute name) set on instances
    follow_scheduler: Callable[[], None]    # the scheduler clock's on_call, which it holds weakly


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
    error."""
    if getattr(pipe, _HANDLE, None) is not None:
        raise RuntimeError("jano is already enabled on this pipeline; call jano_compile.disable(pipe) first")
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise TypeError(f"{type(pipe).__name__} has no `transformer` module to compile")
    inner = getattr(transformer, "_orig_mod", None)     # torch.compile's wrapper: jano's, if enabled
    shared = REGISTRY.for_module(inner) if inner is not None else None
    if shared is not None and shared.auto_policy.scheduler_clock is not None:
        raise RuntimeError("pipe.transformer is the transformer jano is enabled on through another pipeline "
                           "(from_pipe() after enable() shares it): this pipeline runs it with jano already, its "
                           "own scheduler driving the steps; leave enable() out (disable() on the first "
                           "pipeline turns jano off for both)")
    if hasattr(transformer, "_orig_mod"):
        raise TypeError("pipe.transformer is already compiled with torch.compile; enable() compiles it "
                        "itself: give it the module (pipe.transformer = pipe.transformer._orig_mod)")
    if getattr(transformer, "_compiled_call_impl", None) is not None:
        raise TypeError("pipe.transformer was compiled in place (transformer.compile()), and its "
                        "compiled call would run instead of jano's; enable() compiles it itself: load "
                        "the transformer again without .compile() (compile_repeated_blocks() is fine)")
    fixed = sorted(k for k in ("backend", "dynamic") if k in compile_kwargs)
    if fixed:
        raise TypeError(f"jano_compile.enable() sets {' and '.join(fixed)} itself (backend='jano', "
                        "dynamic=False: one static graph per shape, what jano rewrites); leave "
                        f"{' and '.join(fixed)} out")
    if not callable(getattr(getattr(pipe, "scheduler", None), "set_timesteps", None)):
        raise TypeError(f"{type(pipe).__name__} has no scheduler with set_timesteps(): enable() counts the "
                        "steps through it; give the pipeline its scheduler, or compile the transformer with "
                        "torch.compile(..., backend='jano') for a loop of your own")
    _warn_second_transformer(pipe)
    options = _merged_options(config, lowering, mode, options)
    ctl = controller(transformer)
    if ctl.auto_policy.scheduler_clock is not None:
        raise RuntimeError("this transformer is already enabled on another pipeline (one schedule clock "
                           "per model): call jano_compile.disable() on that pipeline first")
    compiled = torch.compile(transformer, backend="jano", dynamic=False, options=options,
                             **compile_kwargs)
    patched = []

    def set_on(obj, name, value):
        obj.__dict__[name] = value
        patched.append((obj, name))

    _name_branches(transformer, ctl, set_on)
    follow_scheduler = _drive_clock(pipe, compiled, ctl, set_on)
    _show_levels(pipe, ctl, set_on)
    _save_overlays(pipe, ctl, set_on)
    pipe.transformer = compiled
    setattr(pipe, _HANDLE, _Handle(transformer, compiled, ctl, patched, follow_scheduler))
    return ctl


def _warn_second_transformer(pipe) -> None:
    """Two-expert pipelines (Wan 2.2: `transformer` for the high-noise steps, `transformer_2`
    for the rest) get jano on the first expert only: say so."""
    if isinstance(getattr(pipe, "transformer_2", None), torch.nn.Module):
        warnings.warn("jano: enable() compiles pipe.transformer only; pipe.transformer_2 (the second "
                      "expert, which runs the later steps) runs as it is, computing every token. jano's "
                      "schedule counts the whole generation, so the first expert's last steps before the "
                      "hand-over may be forecast rather than computed", stacklevel=3)


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


@dataclass
class _Generation:
    """The controller's call count when the current generation began, and whether the
    warning that no step reached the compiled transformer was given (once per enable())."""
    calls_at_start: int
    warned: bool = False


def _drive_clock(pipe, compiled: torch.nn.Module, ctl: Controller, set_on) -> Callable[[], None]:
    """The scheduler drives the step clock: `set_timesteps` (or `set_begin_index`, img2img)
    starts a generation and gives its length, `step` ends a step; no timestep is read from
    the device. The scheduler is that of the pipeline whose loop calls the model (`compiled`,
    which pipelines made with `from_pipe()` share, each maybe with a scheduler of its own),
    else `pipe`'s: another scheduler than the one driving the clock (a swap,
    `pipe.scheduler = X.from_config(...)`, or another pipeline's) is found at the model call,
    whose generation it then starts. Returns what the pipeline's handle must keep alive."""
    clock = SchedulerClock()
    ctl.auto_policy.scheduler_clock = clock
    generation = _Generation(ctl.calls)
    driving = None        # the scheduler whose calls drive the clock

    def start_generation(scheduler, begin: int = 0):
        generation.calls_at_start = ctl.calls
        positions = _positions(scheduler, begin)
        clock.start_generation(_sigmas(scheduler, begin, positions), positions)
        ctl.set_num_inference_steps(positions[-1][0] + 1 if positions else 0)
        ctl.resume_schedule()       # set_active()/refresh() in a callback last for one generation
        ctl.step_records = []       # stats describe this generation (none of whose calls may reach jano)

    def drive(scheduler):
        nonlocal driving
        _warn_if_renoising(scheduler)
        if driving is not None:      # a swapped-out scheduler no longer ticks the clock
            for name in ("set_timesteps", "set_begin_index", "step"):
                driving.__dict__.pop(name, None)
        original_set_timesteps, original_step = scheduler.set_timesteps, scheduler.step

        @functools.wraps(original_set_timesteps)   # pipelines inspect its signature
        def set_timesteps(*args, **kwargs):
            result = original_set_timesteps(*args, **kwargs)
            start_generation(scheduler)
            return result
        set_on(scheduler, "set_timesteps", set_timesteps)

        original_set_begin_index = getattr(scheduler, "set_begin_index", None)
        if original_set_begin_index is not None:
            @functools.wraps(original_set_begin_index)
            def set_begin_index(begin_index: int = 0):
                # img2img and inpainting start partway: the run is the timesteps from there on
                result = original_set_begin_index(begin_index)
                start_generation(scheduler, begin_index)
                return result
            set_on(scheduler, "set_begin_index", set_begin_index)

        @functools.wraps(original_step)
        def step(*args, **kwargs):
            result = original_step(*args, **kwargs)
            clock.end_step()
            if clock.step >= 2 and ctl.calls == generation.calls_at_start and not generation.warned:
                ctl.uncompiled = _warn_uncompiled(clock.step)
                generation.warned = True
            return result
        set_on(scheduler, "step", step)
        driving = scheduler

    def follow_a_swap():
        caller = calling_self(lambda obj: getattr(obj, "transformer", None) is compiled)
        scheduler = getattr(caller if caller is not None else pipe, "scheduler", None)
        if scheduler is not driving and hasattr(scheduler, "set_timesteps"):
            drive(scheduler)    # its set_timesteps ran unwatched: this call starts the generation
            start_generation(scheduler, getattr(scheduler, "begin_index", None) or 0)

    drive(pipe.scheduler)
    # the controller holds the clock, and `follow_a_swap` reaches the pipeline: the clock holds
    # it weakly, the pipeline (its handle) strongly, so a pipeline dropped without disable()
    # is freed with its transformer
    follow = weakref.ref(follow_a_swap)
    clock.on_call = lambda: follow() and follow()()
    return follow_a_swap


#: Schedulers that draw fresh noise into the whole latent at every step (they re-noise the
#: model's x0 prediction): an output forecast or held from earlier steps misses that noise.
#: Measured on tiny random-weight FLUX pipelines: 15-22 dB against the full model, where the
#: deterministic flow-match Euler gives 43-55 dB; on the bundled model 7-18 dB (SSIM <= 0.22).
RENOISING_SCHEDULERS = ("FlowMatchLCMScheduler",)


def _warn_if_renoising(scheduler) -> None:
    config = getattr(scheduler, "config", None)
    if type(scheduler).__name__ in RENOISING_SCHEDULERS or getattr(config, "stochastic_sampling", False):
        warn_user(f"jano: {type(scheduler).__name__} draws fresh noise into the whole latent at every "
                  "step, which the outputs jano forecasts (or holds) on the steps it skips do not "
                  "follow: expect another image than the full model's (7-22 dB PSNR, SSIM 0.01-0.22 on "
                  "the bundled model). Use a deterministic scheduler (e.g. FlowMatchEulerDiscreteScheduler "
                  "without stochastic_sampling)")


def _show_levels(pipe, ctl: Controller, set_on) -> None:
    """The pipeline's progress bar shows each step's level and active fraction, and before
    the model's first call that the first step compiles (tens of seconds on a GPU)."""
    original_progress_bar = pipe.progress_bar

    @functools.wraps(original_progress_bar)
    def progress_bar(*args, **kwargs):
        bar = original_progress_bar(*args, **kwargs)
        if ctl.calls == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(jano="compiling at the first step", refresh=True)
        update = bar.update

        def update_with_level(n=1):
            last = ctl.last_call
            if last is not None and last.phase is not None:
                bar.set_postfix(jano=f"{last.phase} {last.active / max(last.total, 1):.0%}", refresh=False)
            return update(n)
        bar.update = update_with_level
        return bar
    set_on(pipe, "progress_bar", progress_bar)


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


def _warn_uncompiled(steps: int) -> str:
    """Steps of a generation ran, none through jano: dynamo ran the transformer uncompiled.
    Warns, and returns the reason for `stats()["fallback_reason"]`."""
    limit = getattr(torch._dynamo.config, "recompile_limit", None)
    reason = ("denoising steps ran and none called the jano-compiled transformer: dynamo runs it "
              f"uncompiled once it reached its recompile limit (torch._dynamo.config.recompile_limit = "
              f"{limit}) on the transformer's forward code, which counts every compile of it in this "
              "process: after several enable()/disable() rounds with other options or shapes, or other "
              "models whose class shares diffusers' forward wrapper (FLUX, SD3, Wan, ...); "
              "torch._dynamo.reset() before enable() clears the old graphs. Or the pipeline that ran "
              "holds the transformer uncompiled while sharing the enabled pipeline's scheduler (made "
              "with from_pipe() before enable(): make it after)")
    warn_user(f"jano: {steps} {reason}")
    return reason


def _positions(scheduler, begin: int) -> list[tuple[int, int]]:
    """(step, evaluation) of each scheduler step from `begin` on (clock.evaluations): a
    scheduler that evaluates the model twice at one timestep (Heun) takes two scheduler
    steps for one step. Read once per generation."""
    timesteps = scheduler.timesteps
    timesteps = timesteps.detach().cpu().tolist() if isinstance(timesteps, torch.Tensor) else list(timesteps)
    return evaluations(timesteps[begin:])


def _sigmas(scheduler, begin: int, positions: list[tuple[int, int]]) -> Optional[list]:
    """The scheduler's sigma per step (fp32, read once per generation; a step's first
    evaluation's) as the forecast's time axis, for flow-matching schedulers (sigmas in
    [0, 1], which the output is close to linear in); None otherwise: the step index is used."""
    sigmas = getattr(scheduler, "sigmas", None)
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or len(sigmas) < begin + len(positions):
        return None
    sigmas = sigmas[begin:begin + len(positions)].detach().float().cpu()
    sigmas = sigmas[[k for k, (_, evaluation) in enumerate(positions) if evaluation == 0]]
    if sigmas.min() < 0 or sigmas.max() > 1 or bool((sigmas[1:] == sigmas[:-1]).any()):
        return None
    return sigmas.tolist()


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
    for obj, name in handle.patched:
        obj.__dict__.pop(name, None)
    handle.controller.auto_policy.scheduler_clock = None
    handle.controller.release()
    # a pipeline made with from_pipe() after enable() holds the compiled transformer too:
    # from now on it calls the eager one (OptimizedModule's forward is an instance attribute)
    handle.compiled.forward = handle.transformer.__call__
    pipe.transformer = handle.transformer
    delattr(pipe, _HANDLE)
