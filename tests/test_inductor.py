"""Through Inductor (slow on CPU: one compile per test): one compiled graph serves every
active-token count, exactly, with no recompile of dynamo or of our lowering."""
import pytest
import torch
from torch._dynamo.utils import counters

from .oracle import check_oracle


@pytest.mark.parametrize("family", ["flux", "pixart"])   # joint text-first; image-only + cross
def test_one_compile_serves_every_active_count(family):
    counters.clear()
    subsets = [[], [0], lambda n: list(range(1, n, 3)), lambda n: list(range(n // 2)),
               lambda n: list(range(n)), [5]]
    ctl, n = check_oracle(family, 2, torch.float32, subsets, lowering="inductor")
    stats = ctl.stats()
    assert stats["graphs"] == 1, "dynamo handed over more than one graph"
    assert stats["compiles"] == 1, "the rewritten graph was lowered more than once"
    assert counters["stats"]["unique_graphs"] == 1
    assert stats["calls"] == 1 + len(subsets)


def test_static_lengths_through_inductor(monkeypatch):
    """static_shapes=True: the full step runs the full variant, each bucket of active
    counts its own static graph (3 and 4 tokens share one), all equal to the eager model.
    (Kept sets run unpadded, tests/test_static_runtime.py; here every set is padded.)"""
    monkeypatch.setattr("jano_compile.manual_policy.MAX_EXACT_LENGTHS", 0)
    subsets = [[0, 1, 2], [0, 1, 2, 3], list(range(5)), [0, 1, 2]]
    ctl, n = check_oracle("flux", 1, torch.float32, subsets, lowering="inductor",
                          options={"static_shapes": True}, h=8, w=8)
    stats = ctl.stats()
    assert (n, stats["static_graphs"], stats["compiles"]) == (64, 2, 3)
    assert stats["compile_seconds"] > 0


def test_frames_folded_into_the_batch_through_inductor():
    """Latte (frames folded into the batch; its attention runs on operands completed from
    per-op token caches) through Inductor: the completed operands were permuted views of
    their caches, so attention was decomposed into matmuls that Inductor's attention
    patterns fused back assuming another permutation (a crash, or a wrong output where the
    shapes happened to fit). Full step equal to eager, partial steps to the full step."""
    import jano_compile
    from .test_robustness import latte
    torch.manual_seed(0)
    model, _, kwargs = latte()
    model.eval()
    with torch.no_grad():
        eager = model(**kwargs)[0]
        f = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "inductor"})
        ctl = jano_compile.controller(f)
        full = f(**kwargs)[0]
        torch.testing.assert_close(full, eager, rtol=1e-4, atol=1e-5)
        n = ctl.stats()["num_image_tokens"]
        for active in ([0], list(range(1, n, 3)), list(range(n - 1))):
            ctl.set_active(torch.tensor(active))
            torch.testing.assert_close(f(**kwargs)[0], full, rtol=1e-4, atol=1e-5)
            ctl.refresh()
            f(**kwargs)
    assert ctl.stats()["rewritten"] and ctl.stats()["compiles"] == 1
