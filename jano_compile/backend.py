"""The "jano" torch.compile backend: rewrite each captured graph, then lower it."""
from __future__ import annotations

import logging
import warnings

import torch
import torch.fx as fx

from .dump import write_dump
from .lowering import Lowered
from .options import parse_options
from .rewrite import rewrite_graph
from .runtime import FallbackGraph, RewrittenGraph, input_positions, param_positions

log = logging.getLogger(__name__)
BACKEND_NAME = "jano"


def jano_backend(gm: fx.GraphModule, example_inputs, mode=None, options=None):
    """torch.compile backend. `options` are validated here (dynamo runs a string backend at
    the first call, so a bad key fails there, wrapped by dynamo, with our message)."""
    opts = parse_options(mode, options)
    rewritten, report = rewrite_graph(gm, example_inputs)
    if opts.dump_dir:
        write_dump(opts.dump_dir, report, gm, rewritten)
    params = param_positions(example_inputs)
    named = input_positions(gm)
    schedule = dict(opts.schedule)
    if rewritten is None:
        if report.holds_image_tokens:
            warnings.warn(f"jano: graph not rewritten, running plain "
                          f"{opts.lowering}: {report.reason}", stacklevel=2)
        log.info("jano: %s not rewritten: %s", report.graph, report.reason)
        return FallbackGraph(report, Lowered(gm, opts, num_image_tokens=None), params, named, schedule)
    log.info("jano: %s", report)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    results = out_node.args[0]
    num_outputs = len(results) if isinstance(results, (tuple, list)) else 1
    device = next((t.device for t in example_inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
    return RewrittenGraph(report, Lowered(rewritten, opts, report.num_image_tokens), params, named,
                          schedule, num_outputs, device)


def register() -> None:
    """Register "jano" with dynamo once. When the package is loaded through the
    `torch_dynamo_backends` entry point, dynamo registers it itself."""
    from torch._dynamo.backends import registry
    if BACKEND_NAME in registry._COMPILER_FNS or registry._BACKENDS.get(BACKEND_NAME) is not None:
        return
    registry.register_backend(jano_backend, name=BACKEND_NAME)
