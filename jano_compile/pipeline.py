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
from .experts import BOUNDARY_CONFIG, SECOND, expert_names, has_split_rule, owners
from .options import parse_options
from .registry import REGISTRY

log = logging.getLogger(__name__)

_HANDLE = "_jano_handle"


@dataclass
class _Expert:
    """One transformer the pipeline's loop calls (Wan 2.2: two, see experts.py) and jano's
    state for it: its own controller, schedule and step clock."""
    name: str                     # the pipeline's attribute
    transformer: torch.nn.Module
    compiled: torch.nn.Module     # torch.compile's wrapper of `transformer`
    controller: Controller
    clock: SchedulerClock
    calls_at_start: int = 0       # the controller's calls when the current generation began
    warned: bool = False          # that no step reached it (once per enable())


@dataclass
class _Handle:
    experts: list           # [_Expert], the first's controller is enable()'s
    patched: list          # (object, attribute name) set on instances
    follow_scheduler: Callable[[], None]    # the scheduler clocks' on_call, which they hold weakly


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
        _check_uncompiled(name, getattr(pipe, name))
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

    def set_on(obj, name, value):
        obj.__dict__[name] = value
        patched.append((obj, name))

    experts = []
    for name, ctl in zip(names, controllers):
        transformer = getattr(pipe, name)
        compiled = torch.compile(transformer, backend="jano", dynamic=False, options=options,
                                 **compile_kwargs)
        _name_branches(transformer, ctl, set_on)
        experts.append(_Expert(name, transformer, compiled, ctl, SchedulerClock(), ctl.calls))
    follow_scheduler = _drive_clocks(pipe, experts, set_on)
    _show_levels(pipe, controllers, set_on)
    _save_overlays(pipe, controllers[0], set_on)
    for expert in experts:
        setattr(pipe, expert.name, expert.compiled)
    setattr(pipe, _HANDLE, _Handle(experts, patched, follow_scheduler))
    return controllers[0]


def _check_uncompiled(name: str, transformer: torch.nn.Module) -> None:
    """`pipe.<name>` must be the plain module, which enable() compiles itself."""
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


def _drive_clocks(pipe, experts: list, set_on) -> Callable[[], None]:
    """The scheduler drives the experts' step clocks: `set_timesteps` (or `set_begin_index`,
    img2img) starts a generation and gives its length, `step` ends a step; no timestep is
    read from the device. Each expert's generation is the steps it runs (experts.py): one
    expert, all of them. The scheduler is that of the pipeline whose loop calls a model (an
    expert's compiled wrapper, which pipelines made with `from_pipe()` share, each maybe with
    a scheduler of its own), else `pipe`'s: another scheduler than the one driving the clocks
    (a swap, `pipe.scheduler = X.from_config(...)`, or another pipeline's) is found at the
    model call, whose generation it then starts. Returns what the pipeline's handle must
    keep alive."""
    driving = None        # the scheduler whose calls drive the clocks

    def start_generation(scheduler, begin: int = 0):
        timesteps = _timesteps(scheduler)[begin:]
        owner = owners(pipe, scheduler, timesteps)
        for expert in experts:
            own = [k for k, name in enumerate(owner) if name == expert.name]
            positions = evaluations([timesteps[k] for k in own])
            expert.calls_at_start = expert.controller.calls
            expert.clock.start_generation(_sigmas(scheduler, [begin + k for k in own], positions),
                                          _per_scheduler_step(owner, expert.name, positions))
            ctl = expert.controller
            ctl.set_num_inference_steps(positions[-1][0] + 1 if positions else 0)
            ctl.resume_schedule()       # set_active()/refresh() in a callback last for one generation
            ctl.step_records = []       # stats describe this generation (none of whose calls may reach jano)

    def drive(scheduler):
        nonlocal driving
        _warn_if_renoising(scheduler)
        if driving is not None:      # a swapped-out scheduler no longer ticks the clocks
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
            for expert in experts:
                expert.clock.end_step()
                if expert.clock.step >= 2 and expert.controller.calls == expert.calls_at_start \
                        and not expert.warned:
                    expert.controller.uncompiled = _warn_uncompiled(expert.clock.step)
                    expert.warned = True
            return result
        set_on(scheduler, "step", step)
        driving = scheduler

    def follow_a_swap():
        caller = calling_self(lambda obj: any(getattr(obj, e.name, None) is e.compiled for e in experts))
        scheduler = getattr(caller if caller is not None else pipe, "scheduler", None)
        if scheduler is not driving and hasattr(scheduler, "set_timesteps"):
            drive(scheduler)    # its set_timesteps ran unwatched: this call starts the generation
            start_generation(scheduler, getattr(scheduler, "begin_index", None) or 0)

    drive(pipe.scheduler)
    # each controller holds its clock, and `follow_a_swap` reaches the pipeline: the clocks
    # hold it weakly, the pipeline (its handle) strongly, so a pipeline dropped without
    # disable() is freed with its transformers
    follow = weakref.ref(follow_a_swap)
    for expert in experts:
        expert.clock.on_call = lambda: follow() and follow()()
        expert.controller.auto_policy.scheduler_clock = expert.clock
    return follow_a_swap


def _per_scheduler_step(owner: list[str], name: str, positions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The clock's (step, evaluation) at each scheduler step for the expert `name`, whose own
    scheduler steps have `positions`: another expert's steps hold the expert's next own step
    (past its last: one beyond), at which it is not called."""
    result, k = [], 0
    for who in owner:
        if who == name:
            result.append(positions[k])
            k += 1
        else:
            result.append(positions[k] if k < len(positions) else (positions[-1][0] + 1 if positions else 0, 0))
    return result


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


def _show_levels(pipe, controllers: list, set_on) -> None:
    """The pipeline's progress bar shows each step's level and active fraction (of the
    expert that ran it), and before the model's first call that the first step compiles
    (tens of seconds on a GPU)."""
    original_progress_bar = pipe.progress_bar

    @functools.wraps(original_progress_bar)
    def progress_bar(*args, **kwargs):
        bar = original_progress_bar(*args, **kwargs)
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


def _timesteps(scheduler) -> list:
    """The scheduler's timesteps of the generation, read once per generation."""
    timesteps = scheduler.timesteps
    return timesteps.detach().cpu().tolist() if isinstance(timesteps, torch.Tensor) else list(timesteps)


def _sigmas(scheduler, steps: list[int], positions: list[tuple[int, int]]) -> Optional[list]:
    """The scheduler's sigma per step (fp32, read once per generation; a step's first
    evaluation's) as the forecast's time axis, for flow-matching schedulers (sigmas in
    [0, 1], which the output is close to linear in); None otherwise: the step index is used.
    `steps`: the scheduler steps of the expert's generation, whose `positions` are
    `clock.evaluations()` of their timesteps (Heun evaluates twice at one time)."""
    sigmas = getattr(scheduler, "sigmas", None)
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or not steps or len(sigmas) <= steps[-1]:
        return None
    sigmas = sigmas.detach().float().cpu()[[k for k, (_, evaluation) in zip(steps, positions) if evaluation == 0]]
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
    for expert in handle.experts:
        expert.controller.auto_policy.scheduler_clock = None
        expert.controller.release()
        # a pipeline made with from_pipe() after enable() holds the compiled transformer too:
        # from now on it calls the eager one (OptimizedModule's forward is an instance attribute)
        expert.compiled.forward = expert.transformer.__call__
        setattr(pipe, expert.name, expert.transformer)
    delattr(pipe, _HANDLE)
