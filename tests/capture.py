"""A test backend that snapshots each dynamo graph and what rewrite_graph made of it."""
from dataclasses import dataclass, field

import torch

from jano_compile.rewrite import rewrite_graph


@dataclass
class Snapshot:
    before: list = field(default_factory=list)     # dynamo GraphModules
    after: list = field(default_factory=list)      # rewritten GraphModules (or None)
    reports: list = field(default_factory=list)

    def backend(self, gm, example_inputs):
        result = rewrite_graph(gm, example_inputs)
        rewritten, report = result.graph, result.report
        self.before.append(gm)
        self.after.append(rewritten)
        self.reports.append(report)
        return gm.forward


def snapshot(model, *args, **kwargs) -> Snapshot:
    snap = Snapshot()
    with torch.no_grad():
        torch.compile(model, backend=snap.backend, dynamic=False)(*args, **kwargs)
    return snap


def count_calls(gm, target) -> int:
    return sum(1 for n in gm.graph.nodes if n.target is target)
