"""`Controller.stats()`: a typed record that reads like the dict it used to be."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Optional


@dataclass(frozen=True)
class Stats(Mapping):
    """What one model's controller did. `stats["calls"]` and `stats.calls` both work.

    graphs / compiles       graphs dynamo handed over / lowerings made for them
    compile_seconds         time spent in the lazy lowerings of rewritten graphs
    static_graphs           partial-step graphs of a static length (exact or bucket)
    cuda_graphs             captured CUDA graphs (one per variant, length and branch)
    capture_failures        why captures failed (those calls run uncaptured)
    calls / full_calls      calls of the model's graphs / those that computed every token,
                            since the first call or the last release() (disable() releases);
                            a forward that graph breaks split into k graphs counts k a call
    active_fraction         image tokens the last call recomputed, as a fraction
    num_image_tokens        N of the last full step of a rewritten graph
    cache_bytes             every branch's state tensors
    forecast_bytes          of which the forecast history (outputs and their step times; with
                            forecast_kv, the previous K/V and their times)
    rewritten               every graph holding image tokens was rewritten
    fallback_reason         why not (never empty when `rewritten` is False)
    mode                    "auto" (the schedule) or "manual" (set_active / refresh)
    auto_disabled           why the automatic schedule is off, if it is
    levels ... branches     this generation under the automatic schedule (None before it),
                            its steps under set_active() included (level "manual": from a
                            step callback of enable()'s, or a bare loop's calls, each a step
                            counted on from the schedule's last; "off" where the schedule
                            turned off, see auto_disabled); analysis_seconds: the last
                            analysis or re-ranking, reranks: re-rankings by measured error
                            (levels_from="error") or period assignments (work=...); periods:
                            {period in steps: fraction of image tokens} under a work budget;
                            compute_saved: None until a step of this generation ran
    """
    graphs: int
    compiles: int
    compile_seconds: float
    static_graphs: int
    cuda_graphs: int
    capture_failures: list
    calls: int
    full_calls: int
    active_fraction: float
    num_image_tokens: Optional[int]
    cache_bytes: int
    forecast_bytes: int
    rewritten: bool
    fallback_reason: Optional[str]
    mode: str
    auto_disabled: Optional[str]
    levels: Optional[list] = None
    analysis_seconds: Optional[float] = None
    active_fraction_map: Optional[float] = None
    medium_fraction_map: Optional[float] = None
    compute_saved: Optional[float] = None
    branches: Optional[list] = None
    reranks: Optional[int] = None
    periods: Optional[dict] = None

    def __getitem__(self, key: str):
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def _keys(self) -> tuple:
        return tuple(f.name for f in fields(self))
