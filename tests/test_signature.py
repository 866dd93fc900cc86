"""The signature of a rewritten graph describes every added input and output, in order,
with the real dtypes and shapes the graph reads; the graph writes its states in place."""
import pytest
import torch
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from jano_compile.fake_inputs import fake_inputs
from jano_compile.passes.signature import (STATE_WRITE, Role, SignatureError, graph_signature, placeholders,
                                           state_writes)

from .capture import snapshot
from .models import flux, sd3


@pytest.mark.parametrize("family,dtype", [(flux, torch.float32), (sd3, torch.bfloat16)])
def test_signature_describes_every_added_input_and_output(family, dtype):
    model, kwargs, n = family(b=2)
    model = model.to(dtype).eval()
    kwargs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
    snap = snapshot(model, **kwargs)
    gm, before, report = snap.after[0], snap.before[0], snap.reports[0]
    assert report.rewritten, report.reason
    sig = graph_signature(gm)
    assert report.signature == sig

    placeholders = [p for p in gm.graph.nodes if p.op == "placeholder"]
    user = [p for p in before.graph.nodes if p.op == "placeholder"]
    assert sig.num_user_inputs == len(user) == sig.index_position
    added = placeholders[sig.num_user_inputs:]
    assert added[0].name == "active_index"
    assert [p.name for p in added[1:]] == [s.name for s in sig.states]
    roles = [s.role for s in sig.states]
    assert roles[0] is Role.OUT_CACHE and roles.count(Role.OUT_CACHE) == 1
    assert roles[1:] == [Role.K_CACHE, Role.V_CACHE] * report.self_attention_count
    assert [s.layer for s in sig.states[1::2]] == list(range(report.self_attention_count))
    assert sig.num_image_tokens == n

    # run the rewritten graph on fakes built from the signature: only the user outputs come
    # back; every state is written in place (one write per K/V cache, one for out_cache)
    mode, fakes = fake_inputs(sig, [p.meta["example_value"] for p in user], num_active=3)
    with mode:
        outs = FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fakes)
    original_out = next(x for x in before.graph.nodes if x.op == "output").args[0]
    assert len(outs) == len(original_out) == sig.num_user_outputs
    written = [w.meta[STATE_WRITE] for w in state_writes(gm.graph)]
    assert sorted(written) == sorted(s.name for s in sig.states)
    assert sig.states[0].dtype == dtype and all(s.token_dim in (1, 2) for s in sig.states)
    assert sig.states[0].shape[sig.states[0].token_dim] == n
    assert report.cache_bytes == sum(s.nbytes for s in sig.states)


def test_signature_rejects_a_write_to_a_user_input():
    model, kwargs, _ = flux()
    gm = snapshot(model.eval(), **kwargs).after[0]
    write = state_writes(gm.graph)[0]
    user_input = placeholders(gm.graph)[0]
    write.args = (user_input, *write.args[1:])
    with pytest.raises(SignatureError, match="other than a state"):
        graph_signature(gm)
