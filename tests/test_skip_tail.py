"""The skip tail's dead-code elimination (passes/skip_tail.py): writes in place into tensors
a graph made itself are dropped when nothing live reads them, and kept otherwise; the graph's
outputs never change (checked against the graph before the pass, on dynamo's own graphs)."""
import copy
import importlib

import pytest
import torch

skip_tail = importlib.import_module("jano_compile.passes.skip_tail")


def dynamo_graph(fn, *args):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    torch._dynamo.reset()
    torch.compile(fn, backend=backend, dynamic=False, fullgraph=True)(*args)
    return graphs[0]


def dead_rope_table(x):                 # Wan's RoPE: a table of its own, written, unread
    t = torch.empty_like(x)
    t[0::2] = x[0::2] * 2
    t[1::2] = x[1::2] * 3
    return (x + 1,)


def dead_write_through_to(x):           # CogView4: `.to()` of a fresh result, written, unread
    t = (x * 2).to(torch.float32)
    t[:2] = x[:2]
    return (x - 1,)


def read_after_write(x):
    t = torch.zeros(4)
    t[:2] = x[:2]
    return (t + 1,)


def read_through_a_view(x):             # written through one view, read through another
    t = torch.zeros(4)
    a, b = t.split(2)
    a[0] = x[0]
    return (torch.cat([a, b]) * 1,)


def written_by_methods(x):              # FX's own pass drops these (their results are unused)
    t, u, v = torch.empty(4), torch.zeros(4), torch.zeros(4)
    t.copy_(x)
    u.masked_fill_(x > 0, 1.0)
    v.add_(x)
    return (t * 2 + u + v,)


def input_written(x):                   # a write into an input: never dropped
    v = x[:2]
    v[0] = 5.0
    return (x * 0,)


def writes(gm) -> int:
    return sum(1 for n in gm.graph.nodes if skip_tail.written(n) is not None)


@pytest.mark.parametrize("fn,dropped", [(dead_rope_table, 2), (dead_write_through_to, 1), (read_after_write, 0),
                                        (read_through_a_view, 0), (written_by_methods, 0), (input_written, 0)])
def test_dead_writes_go_and_outputs_stay(fn, dropped):
    x = torch.randn(4)
    gm = dynamo_graph(fn, x.clone())
    expected = gm(x.clone())
    pruned = copy.deepcopy(gm)
    skip_tail._eliminate_dead_code(pruned.graph)
    pruned.recompile()
    assert writes(gm) - writes(pruned) == dropped
    for a, b in zip(pruned(x.clone()), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
