"""Warnings that point at the user's line: the first frame outside torch, diffusers and
jano, wherever inside a compiled call (dynamo's frames, a pipeline's loop) they are raised."""
from __future__ import annotations

import os
import sys
import warnings

import torch

_LIBRARIES = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch,))
_OURS = (os.path.dirname(os.path.abspath(__file__)) + os.sep,
         os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "passes") + os.sep)


def _library(filename: str) -> bool:
    path = os.path.abspath(filename)
    return (path.startswith(_LIBRARIES + _OURS) or f"{os.sep}diffusers{os.sep}" in path
            or path.startswith(os.path.dirname(warnings.__file__) + os.sep + "contextlib"))


def warn_user(message: str) -> None:
    """`warnings.warn(message)` (UserWarning) attributed to the user's frame."""
    frame, level = sys._getframe(1), 2     # stacklevel 2: the caller of warn_user
    while frame is not None and _library(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level if frame is not None else 2)
