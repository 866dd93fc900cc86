"""jano-compile: Jano region-adaptive DiT inference as a torch.compile backend.

    import jano_compile
    f = torch.compile(transformer, backend="jano")
    ctl = jano_compile.controller(f)
"""
from .backend import jano_backend, register
from .controller import Controller, controller
from .explain import explain
from .report import GraphReport, Report

register()

__all__ = ["Controller", "GraphReport", "Report", "controller", "explain", "jano_backend"]
