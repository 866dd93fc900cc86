"""Backend options: `torch.compile(m, backend="jano", mode=..., options={...})`.

Keys: `lowering` ("inductor", the default, or "eager": run the rewritten FX graph in
Python, for tests and debugging), `dump_dir` (also the env var JANO_DUMP_DIR), the Jano
schedule settings (the fields of `JanoConfig`), and any `torch._inductor.config` setting,
which is passed to Inductor together with what `mode=` selects.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

LOWERINGS = ("inductor", "eager")
BACKEND_KEYS = ("lowering", "dump_dir")


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
    inductor: Mapping[str, Any] = field(default_factory=dict)   # torch._inductor.config patches
    schedule: Mapping[str, Any] = field(default_factory=dict)   # JanoConfig fields given

    def inductor_patches(self) -> dict:
        """Inductor config patches: what `mode` selects, then the explicit settings."""
        patches = {}
        if self.mode and self.mode != "default":
            import torch
            patches.update(torch._inductor.list_mode_options(self.mode))
        patches.update(self.inductor)
        return patches


def parse_options(mode: Optional[str] = None, options: Optional[Mapping[str, Any]] = None) -> Options:
    """Validate `options`; an unknown key raises ValueError naming it and the valid ones."""
    options = dict(options or {})
    schedule_keys = _schedule_keys()
    inductor_keys = _inductor_keys()
    for key in options:
        if key not in BACKEND_KEYS and key not in schedule_keys and key not in inductor_keys:
            raise ValueError(
                f"unknown jano option {key!r}. Valid: {', '.join(BACKEND_KEYS)}; the schedule "
                f"settings {', '.join(sorted(schedule_keys))}; or any torch._inductor.config "
                "setting (e.g. 'max_autotune').")
    lowering = options.get("lowering", "inductor")
    if lowering not in LOWERINGS:
        raise ValueError(f"jano option 'lowering' must be one of {LOWERINGS}, got {lowering!r}")
    if mode not in (None, "default", "reduce-overhead", "max-autotune",
                    "max-autotune-no-cudagraphs"):
        raise ValueError(f"unknown torch.compile mode {mode!r} for the jano backend")
    return Options(
        lowering=lowering,
        dump_dir=options.get("dump_dir") or os.environ.get("JANO_DUMP_DIR") or None,
        mode=mode,
        inductor={k: v for k, v in options.items() if k in inductor_keys and k not in BACKEND_KEYS},
        schedule={k: v for k, v in options.items() if k in schedule_keys},
    )
