"""jano-compile: Jano region-adaptive DiT inference as a torch.compile backend.

    import jano_compile
    f = torch.compile(transformer, backend="jano", dynamic=False)   # one rewritten graph per shape
    ctl = jano_compile.controller(f)
"""
from .backend import jano_backend, register
from .controller import Controller, controller
from .config import JanoConfig
from .explain import explain
from .pipeline import disable, enable
from .report import GraphReport, Report

register()

__all__ = ["Controller", "GraphReport", "JanoConfig", "Report", "controller", "disable", "enable",
           "explain", "jano_backend"]
