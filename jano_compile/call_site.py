"""Who called into a compiled model, found by walking the Python stack from inside the call
(dynamo's frames, jano's, a pipeline's loop lie in between): warnings that point at the
user's line, and the pipeline whose loop made the call."""
from __future__ import annotations

import functools
import os
import sys
import warnings
from typing import Callable, Optional

import torch

_TORCH = os.path.dirname(torch.__file__) + os.sep
_OURS = (os.path.dirname(os.path.abspath(__file__)) + os.sep,
         os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "passes") + os.sep)
_CONTEXTLIB = os.path.join(os.path.dirname(warnings.__file__), "contextlib")


@functools.lru_cache(maxsize=1024)
def _internal(filename: str) -> bool:
    """A frame of torch's or jano's (or contextlib's) code."""
    path = os.path.abspath(filename)
    return path.startswith((_TORCH, *_OURS, _CONTEXTLIB))


@functools.lru_cache(maxsize=1024)
def _library(filename: str) -> bool:
    return _internal(filename) or f"{os.sep}diffusers{os.sep}" in os.path.abspath(filename)


def warn_user(message: str) -> None:
    """`warnings.warn(message)` (UserWarning) attributed to the first frame outside torch,
    diffusers and jano."""
    frame, level = sys._getframe(1), 2     # stacklevel 2: the caller of warn_user
    while frame is not None and _library(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level if frame is not None else 2)


def calling_self(accept: Callable[[object], bool], frames: int = 8) -> Optional[object]:
    """The `self` of one of the first `frames` frames outside torch and jano that `accept`s
    it (a pipeline whose loop calls the model), or None. Between the pipeline's frame and
    this call lie, besides torch's and jano's frames, the model's forward and its wrappers
    (diffusers') and the lowered graph's code (Inductor's output, an FX module's)."""
    frame = sys._getframe(1)
    while frame is not None and frames > 0:
        if not _internal(frame.f_code.co_filename):
            frames -= 1
            candidate = frame.f_locals.get("self")
            if candidate is not None and accept(candidate):
                return candidate
        frame = frame.f_back
    return None
