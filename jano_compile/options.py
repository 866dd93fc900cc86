"""Backend options: `torch.compile(m, backend="jano", mode=..., options={...})`.

Keys: `lowering` ("inductor", the default, or "eager": run the rewritten FX graph in
Python, for tests and debugging), `dump_dir` (also the env var JANO_DUMP_DIR),
`static_shapes` (one graph per active-token count, and one for full steps, instead of the
one symbolic graph; default off), `static_buckets` (under static shapes or CUDA graphs, index
sets that are neither one of the automatic schedule's regions nor a set the user keeps
(manual_policy.py) are padded to a multiple of N / static_buckets tokens, default 16: more
buckets, less padding, more compiles or captures; see the README's bucket measurement),
`cuda_graphs` (capture each step as a CUDA graph and replay it; default with
mode="reduce-overhead" or "max-autotune" on CUDA; True on a CPU runs the same static
buffers without capture, for tests; the one symbolic partial graph is captured once per
index length unless `static_shapes=True`), the Jano schedule settings (the fields of
`JanoConfig`), and any `torch._inductor.config` setting, which is passed to Inductor
together with what `mode=` selects.

`torch.compile` itself refuses `mode` together with `options` ("Either mode or options can
be specified"), so through it the backend gets one or the other; to give both, put the mode
among the options (`options={"mode": "reduce-overhead", ...}`, as `enable(pipe, mode=...)`
does). `parse_options` merges them like torch's own Inductor wrapper: what the mode
selects first, then the explicit settings, which win.

Every error names the option (or the env var) and what to change; `parse_options` runs at
the first call of the compiled model, so dynamo shows these messages wrapped in its own.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

LOWERINGS = ("inductor", "eager")
BACKEND_KEYS = ("lowering", "dump_dir", "static_shapes", "cuda_graphs", "static_buckets")
STATIC_BUCKETS = 16     # index sets of other lengths are padded to a multiple of N / 16
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DUMP_DIR_ENV = "JANO_DUMP_DIR"


def _inductor_keys() -> set[str]:
    from torch._inductor import config as inductor_config
    return set(inductor_config.get_config_copy().keys())


def _schedule_keys() -> set[str]:
    from .config import JanoConfig
    return {f.name for f in dataclasses.fields(JanoConfig)}


@dataclass(frozen=True)
class Options:
    """Validated backend options (frozen: one per torch.compile call)."""
    lowering: str = "inductor"
    dump_dir: Optional[str] = None
    mode: Optional[str] = None
    static_shapes: Optional[bool] = None   # None: off (the symbolic graph)
    cuda_graphs: Optional[bool] = None     # None: with mode reduce-overhead / max-autotune on CUDA
    static_buckets: Optional[int] = None    # padded lengths: multiples of N / static_buckets
                                            # (None: STATIC_BUCKETS)
    inductor: Mapping[str, Any] = field(default_factory=dict)   # torch._inductor.config patches
    schedule: Mapping[str, Any] = field(default_factory=dict)   # JanoConfig fields given

    def pass_config(self):
        """What the rewrite needs of the schedule settings: `reuse`, `forecast_order` and
        `forecast_kv` as given, else the recipe's (family presets do not set them)."""
        from jano_compile.passes import PassConfig

        from .config import resolve_config
        config = resolve_config(None, self.schedule)
        return PassConfig(reuse=config.reuse, forecast_order=config.forecast_order,
                          forecast_kv=config.forecast_kv)

    def inductor_patches(self) -> dict:
        """Inductor config patches: what `mode` selects, then the explicit settings."""
        patches = {}
        if self.mode and self.mode != "default":
            import torch
            patches.update(torch._inductor.list_mode_options(self.mode))
        patches.update(self.inductor)
        return patches


def parse_options(mode: Optional[str] = None, options: Optional[Mapping[str, Any]] = None) -> Options:
    """Validate `mode` and `options`. A wrong key, value or type raises ValueError or
    TypeError naming the option and what it must be; nothing is created on disk."""
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(
            f"jano backend: `options` must be a dict of option name -> value, got "
            f"{type(options).__name__} {options!r:.80}; e.g. options={{'lowering': 'eager'}}.")
    if mode not in (None, *MODES):
        raise ValueError(
            f"unknown torch.compile mode {mode!r} for the jano backend; use one of "
            f"{', '.join(MODES)}, or leave mode out.")
    options = dict(options or {})
    if "mode" in options:
        if mode is not None and options["mode"] != mode:
            raise ValueError(f"jano backend: mode={mode!r} and options['mode']={options['mode']!r} "
                             "disagree; give the mode once.")
        mode = options.pop("mode")
        if mode not in (None, *MODES):
            raise ValueError(f"unknown torch.compile mode {mode!r} in the jano options; use one "
                             f"of {', '.join(MODES)}, or leave it out.")
    schedule_keys = _schedule_keys()
    inductor_keys = _inductor_keys()
    inductor = {}
    for key, value in options.items():
        if key in BACKEND_KEYS or key in schedule_keys:
            continue
        setting = key.replace("-", "_") if isinstance(key, str) else key   # as torch.compile
        if setting not in inductor_keys:
            raise ValueError(
                f"unknown jano option {key!r}. Valid: mode, {', '.join(BACKEND_KEYS)}; the schedule "
                f"settings {', '.join(sorted(schedule_keys))}; or any torch._inductor.config "
                "setting (e.g. 'max_autotune').")
        _check_inductor_type(key, setting, value)
        inductor[setting] = value
    lowering = options.get("lowering", "inductor")
    if lowering not in LOWERINGS:
        raise ValueError(f"jano option 'lowering' must be one of {LOWERINGS}, got {lowering!r}")
    if options.get("dump_dir"):
        dump_dir = _check_writable_dir(options["dump_dir"], "jano option 'dump_dir'", "leave dump_dir out")
    elif os.environ.get(DUMP_DIR_ENV):
        dump_dir = _check_writable_dir(os.environ[DUMP_DIR_ENV], f"environment variable {DUMP_DIR_ENV}",
                                       f"unset {DUMP_DIR_ENV}")
    else:
        dump_dir = None
    for key in ("static_shapes", "cuda_graphs"):
        if options.get(key) is not None and not isinstance(options[key], bool):
            raise TypeError(f"jano option {key!r} must be True, False or None (automatic), "
                            f"got {options[key]!r}")
    buckets = options.get("static_buckets")
    if buckets is not None and (isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1):
        raise ValueError(f"jano option 'static_buckets' must be a positive int (index sets are padded "
                         f"to a multiple of N / static_buckets tokens; default {STATIC_BUCKETS}) or "
                         f"None, got {buckets!r}")
    schedule = {k: v for k, v in options.items() if k in schedule_keys}
    _check_schedule(schedule)
    if isinstance(schedule.get("save_dir"), (str, os.PathLike)):   # its type is the config's check
        _check_writable_dir(schedule["save_dir"], "jano option 'save_dir'", "leave save_dir out")
    return Options(lowering=lowering, dump_dir=dump_dir, mode=mode, inductor=inductor,
                   schedule=schedule, static_shapes=options.get("static_shapes"),
                   cuda_graphs=options.get("cuda_graphs"), static_buckets=buckets)


def _check_schedule(schedule: Mapping[str, Any]) -> None:
    """Raise the JanoConfig error (it names the field) when the schedule settings are
    invalid without a family preset and with every one alike; which preset applies is
    known only at the first call, when the model's family is."""
    from .config import PRESETS, resolve_config
    families = {family for presets in PRESETS.values() for family in presets}
    errors = []
    for family in (None, *sorted(families)):
        try:
            resolve_config(family, schedule)
            return
        except ValueError as e:
            errors.append(e)
    raise errors[0]


def _check_inductor_type(key: str, setting: str, value: Any) -> None:
    """The type check `torch.compile(options=...)` makes (`_TorchCompileInductorWrapper.
    apply_options`): a plain class must match by isinstance. Unlike torch, unions of plain
    classes (`int | None`) and `Literal[...]` are checked too; other generics are not."""
    from torch._inductor import config as inductor_config
    expected = inductor_config.get_type(setting)
    if typing.get_origin(expected) is typing.Literal:
        allowed = typing.get_args(expected)
        if value not in allowed:
            raise TypeError(f"jano option {key!r} (a torch._inductor.config setting) must be one "
                            f"of {allowed!r}, got {value!r}.")
        return
    try:
        matches = isinstance(value, expected)
    except TypeError:       # list[str], Callable[...] and the like: not checkable here
        return
    if not matches:
        name = expected.__name__ if isinstance(expected, type) else str(expected)
        raise TypeError(f"jano option {key!r} (a torch._inductor.config setting) must be of type "
                        f"{name}, got {value!r} of type {type(value).__name__}.")


def _check_writable_dir(value: Any, source: str, unset: str) -> str:
    """`value` as a str path to a directory that exists or can be created; else raise,
    naming `source` ("jano option 'dump_dir'", 'save_dir' or the env var) and offering
    `unset` (how to do without one) beside a writable path. Creates nothing."""
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str):
        raise TypeError(f"{source} must be a directory path (str or os.PathLike), got "
                        f"{value!r} of type {type(value).__name__}.")
    fix = f"give a writable directory path (it is created if missing) or {unset}"
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise ValueError(f"{source}={path!r} is not a directory (a file is there); {fix}.")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{source}={path!r}: the directory is not writable; {fix}.")
        return path
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"{source}={path!r}: the directory cannot be created, {ancestor!r} is "
                         f"a file, not a directory; {fix}.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{source}={path!r}: the directory cannot be created, no write "
                         f"permission in {ancestor!r}; {fix}.")
    return path
