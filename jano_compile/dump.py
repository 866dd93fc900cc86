"""Graph dumps: FX code before and after the passes with shapes, and the report."""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.fx as fx

from .report import GraphReport

log = logging.getLogger(__name__)


def _shape(node: fx.Node) -> str:
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


def write_dump(dump_dir: str, report: GraphReport, before: fx.GraphModule,
               after: Optional[fx.GraphModule]) -> str:
    path = os.path.join(dump_dir, report.graph)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "before.txt"), "w") as f:
        f.write(readable(before))
    if after is not None:
        with open(os.path.join(path, "after.txt"), "w") as f:
            f.write(readable(after))
    with open(os.path.join(path, "report.json"), "w") as f:
        f.write(report.to_json())
    with open(os.path.join(path, "report.txt"), "w") as f:
        f.write(str(report) + "\n")
    log.info("jano: wrote graph dump to %s", path)
    return path
