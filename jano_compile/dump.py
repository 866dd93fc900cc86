"""Graph dumps: FX code before and after the passes with shapes, the variants the runtime
runs besides the rewritten graph (the skip tail; under static_shapes=True the full-step
graph), and the report."""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.fx as fx

from .report import GraphReport

log = logging.getLogger(__name__)


def _shape(node: fx.Node) -> str:
    # "val" first: the rewritten graph's symbolic shapes (rewrite._validate) over dynamo's
    v = node.meta.get("val", node.meta.get("example_value"))
    if isinstance(v, torch.Tensor):
        return f"{str(v.dtype).replace('torch.', '')}{list(v.shape)}"
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(f"{list(t.shape)}" for t in v if isinstance(t, torch.Tensor)) + ")"
    return "" if v is None else type(v).__name__


def readable(gm: fx.GraphModule) -> str:
    """One line per node: `name = target(args)  # dtype[shape]`, then the generated code."""
    lines = []
    for n in gm.graph.nodes:
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", n.target)
        lines.append(f"{n.name} = {n.op} {target}{tuple(n.args)!s:.160}"
                     f"{' ' + str(dict(n.kwargs)) if n.kwargs else ''}  # {_shape(n)}")
    return "\n".join(lines) + "\n\n# generated code\n" + gm.code


class DumpDirError(OSError):
    """The graph dump could not be written under `dump_dir`; the message names the option."""


def write_dump(dump_dir: str, report: GraphReport, before: fx.GraphModule,
               after: Optional[fx.GraphModule], variants: Optional[dict] = None) -> str:
    """Write `before.txt`, `after.txt` (when rewritten), `<name>.txt` for each of
    `variants` ({name: graph module}) and the report under `dump_dir/<graph>`; creates the
    directories. An OS failure raises `DumpDirError` naming the option (`parse_options`
    checked the path, but it can change since)."""
    path = os.path.join(dump_dir, report.graph)
    graphs = {"before": before, "after": after, **(variants or {})}
    try:
        os.makedirs(path, exist_ok=True)
        for name, gm in graphs.items():
            if gm is not None:
                with open(os.path.join(path, f"{name}.txt"), "w") as f:
                    f.write(readable(gm))
        with open(os.path.join(path, "report.json"), "w") as f:
            f.write(report.to_json())
        with open(os.path.join(path, "report.txt"), "w") as f:
            f.write(str(report) + "\n")
    except OSError as err:
        raise DumpDirError(
            f"jano option 'dump_dir' (or env var JANO_DUMP_DIR) = {dump_dir!r}: could not write "
            f"the graph dump to {path!r}: {err.strerror or err}; give a writable directory (it is "
            f"created if missing), or leave dump_dir out and unset JANO_DUMP_DIR.") from err
    log.info("jano: wrote graph dump to %s", path)
    return path
