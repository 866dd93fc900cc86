"""The "jano" torch.compile backend: rewrite each captured graph, then lower it."""
from __future__ import annotations

import logging

import torch.fx as fx

from jano_compile.passes.input_roles import input_roles

from .call_site import warn_user
from .dump import write_dump
from .geometry import grid_from_graph, latent_rows_from_graph
from .lowering import LoweredUnrewritten
from .options import parse_options
from .rewrite import rewrite_graph
from .runner import GraphRunner
from .runtime import CompiledGraph, param_positions, recompile_key

log = logging.getLogger(__name__)
BACKEND_NAME = "jano"


def jano_backend(gm: fx.GraphModule, example_inputs, mode=None, options=None):
    """torch.compile backend. `options` are validated here (dynamo runs a string backend at
    the first call, so a bad key fails there, wrapped by dynamo, with our message)."""
    opts = parse_options(mode, options)
    rewritten, report, tail, full_variant = rewrite_graph(gm, example_inputs, opts.pass_config())
    if opts.dump_dir and rewritten is None:
        write_dump(opts.dump_dir, report, gm, None)
    params = param_positions(example_inputs)
    common = dict(param_positions=params, roles=input_roles(gm), schedule_options=opts.schedule)
    if rewritten is None:
        if report.holds_image_tokens:
            warn_user(f"jano: graph not rewritten, running plain {opts.lowering}: {report.reason}")
        log.info("jano: %s not rewritten: %s", report.graph, report.reason)
        return CompiledGraph(report, None, LoweredUnrewritten(gm, opts, example_inputs), **common)
    log.info("jano: %s", report)
    sig = report.signature
    runner = GraphRunner(sig, opts, rewritten, tail=tail, full_variant=full_variant,
                         static_positions=frozenset(params))
    if opts.dump_dir:
        variants = {"full_step": runner.full, "skip_tail": runner.tail}
        write_dump(opts.dump_dir, report, gm, rewritten,
                   {name: v.gm for name, v in variants.items() if v is not None})
    return CompiledGraph(report, runner, None, recompile_key=recompile_key(example_inputs),
                         grid_hint=_read_geometry(grid_from_graph, gm, sig.num_image_tokens),
                         latent_rows=_read_geometry(latent_rows_from_graph, gm), **common)


def _read_geometry(read, gm: fx.GraphModule, *args):
    """What `read` (geometry.py) finds in the graph: the token grid its position table holds,
    the mask of the latent's rows; None where it tells nothing. Both return None for a graph
    without them, so an exception here is a bug: logged, and the model runs on (only the
    automatic schedule reads them, and says why when it turns off)."""
    try:
        return read(gm, *args)
    except Exception:  # noqa: BLE001 - a bug in reading the geometry must not break the model
        log.warning("jano: %s failed on a graph; the automatic schedule may turn off", read.__name__,
                    exc_info=True)
        return None


def register() -> None:
    """Register "jano" with dynamo once. When the package is loaded through the
    `torch_dynamo_backends` entry point, dynamo registers it itself."""
    from torch._dynamo.backends import registry
    if BACKEND_NAME in registry._COMPILER_FNS or registry._BACKENDS.get(BACKEND_NAME) is not None:
        return
    registry.register_backend(jano_backend, name=BACKEND_NAME)
