"""The FLOP counter behind benchmarks/quality_speed.py's "work done" column counts what it
claims: matrix products and attention by hand, and the ops of a compiled jano graph."""
import torch
import torch.nn.functional as F

import jano_compile

from .benchmark_modules import load
from .models import FAMILIES


def test_counts_matrix_products_and_attention_by_hand():
    WorkCounter = load("work_counter").WorkCounter
    linear = torch.nn.Linear(8, 16)
    x = torch.randn(2, 5, 8)
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    with torch.no_grad(), WorkCounter() as counter:
        linear(x)
        F.scaled_dot_product_attention(q, k, v)
        torch.bmm(torch.randn(3, 4, 6), torch.randn(3, 6, 2))
    assert counter.flops == 2 * (2 * 5) * 8 * 16 + 4 * 2 * 3 * 5 * 7 * 4 + 2 * 3 * 4 * 6 * 2


def test_sees_inside_a_compiled_jano_graph():
    """A refresh step does the model's work; a step with a quarter of the image tokens active
    does less, and at least the text tokens' share."""
    WorkCounter = load("work_counter").WorkCounter
    model, kwargs, n = FAMILIES["flux"].build(b=1)
    model.eval()
    compiled = torch.compile(model, backend="jano", options={"lowering": "eager"})
    ctl = jano_compile.controller(compiled)

    def work(fn):
        with WorkCounter() as counter:
            fn(**kwargs, return_dict=False)
        return counter.flops

    with torch.no_grad():
        compiled(**kwargs, return_dict=False)        # traced and rewritten outside the counter
        eager = work(model)
        ctl.refresh()
        assert work(compiled) == eager
        ctl.set_active(torch.arange(0, n, 4))
        partial = work(compiled)
    assert 0 < partial < eager
