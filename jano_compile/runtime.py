"""The callables the backend hands to dynamo. At each call they find the model's controller
through the parameters they receive (see registry.py) and let it run the graph."""
from __future__ import annotations

import logging
import sys
from typing import Callable, Mapping, Optional

import torch

from jano_compile.passes.input_roles import InputRoles

from .controller import Controller
from .geometry import LatentRows
from .registry import REGISTRY
from .report import GraphReport
from .runner import GraphRunner

log = logging.getLogger(__name__)


def _calling_module(param: torch.Tensor):
    """The nn.Module whose forward dynamo is running: the `self` of a caller frame that owns
    `param`. Only a fallback, for a model compiled without `jano_compile.controller()` or
    `enable()` attaching it."""
    frame = sys._getframe(2)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, torch.nn.Module) and any(p is param for p in candidate.parameters()):
            return candidate
        frame = frame.f_back
    return None


class CompiledGraph:
    """One dynamo graph as jano serves it: rewritten (`runner` set) or left as it is."""

    def __init__(self, report: GraphReport, runner: Optional[GraphRunner],
                 unrewritten: Optional[Callable], param_positions: list[int], roles: InputRoles,
                 schedule_options: Mapping, grid_hint: Optional[tuple[int, int, int]] = None,
                 latent_rows: Optional[LatentRows] = None, recompile_key: Optional[tuple] = None):
        self.report = report
        self.runner = runner
        self.unrewritten = unrewritten
        self.param_positions = param_positions
        self.roles = roles
        self.schedule_options = dict(schedule_options)
        self.grid_hint = grid_hint      # the token grid read from the graph (geometry.grid_from_graph)
        self.latent_rows = latent_rows  # packed slots: the latent's rows (geometry.latent_rows_from_graph)
        self.recompile_key = recompile_key   # equal for graphs dynamo captured again for the same inputs
        self._orphan: Optional[Controller] = None   # for graphs that receive no parameter

    @property
    def signature(self):
        return self.runner.signature if self.runner else None

    @property
    def compiles(self) -> int:
        return self.runner.compiles if self.runner else self.unrewritten.compiles

    def controller_for(self, args) -> Controller:
        if not self.param_positions:
            self._orphan = self._orphan or Controller()
            return self._orphan
        params = [args[i] for i in self.param_positions]
        ctl = REGISTRY.lookup(params[0])
        return ctl if ctl is not None else self._find_controller(params)

    @staticmethod
    def _find_controller(params: list) -> Controller:
        """The controller of a model whose first parameter the registry does not know: through
        its other parameters (layers added, a LoRA say), else through the module that owns
        them (parameters replaced: `load_state_dict(..., assign=True)`), else a new one."""
        ctl = REGISTRY.find(params)
        module = _calling_module(params[0]) if ctl is None else None
        if module is not None:
            ctl = REGISTRY.for_module(module)
            if ctl is None:
                log.info("jano: found the model %s by walking the call stack; call "
                         "jano_compile.controller(compiled) before the first call to attach it "
                         "directly", type(module).__name__)
                ctl = Controller()
                ctl.attach(module)
            REGISTRY.register(module.parameters(), ctl, module)
        ctl = ctl if ctl is not None else Controller()
        REGISTRY.register(params, ctl)
        return ctl

    def __call__(self, *args):
        return self.controller_for(args).run(self, args)


def param_positions(example_inputs) -> list[int]:
    return [i for i, t in enumerate(example_inputs) if isinstance(t, torch.nn.Parameter)]


def recompile_key(example_inputs) -> Optional[tuple]:
    """The frame dynamo is compiling and the shapes and dtypes of the graph's inputs other
    than parameters: two graphs with equal keys are one frame captured again for inputs of
    the same shapes, because another guard changed (an input's strides, train()/eval(),
    ...). None outside dynamo's compile context."""
    from torch._guards import CompileContext
    compile_id = CompileContext.current_compile_id()
    if compile_id is None:
        return None
    return compile_id.frame_id, tuple((tuple(t.shape), t.dtype) for t in example_inputs
                                      if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter))
