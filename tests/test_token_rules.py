"""Token rules of issue 11 (part 2), one group per rule: complex-number RoPE
(`view_as_complex`, a complex per-token table, `view_as_real`, `flatten`) and head repeats of
grouped-query attention (`repeat_interleave`, `repeat`, `expand` on the head axis).

Each rule has: a tiny module written here that uses the op token-wise, checked with the
oracle (full step == eager, partial steps == full step); the structure of its rewritten
graph; a near miss where the same op moves values between tokens, which must not be
rewritten and whose reason names the op; and one real diffusers class (tiny config of
`benchmarks/coverage_models.py`)."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import jano_compile
from jano_compile.passes.token_layout import value

from .capture import count_calls, snapshot

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from coverage_models import TINY  # noqa: E402

TOLERANCE = dict(atol=1e-4, rtol=1e-4)


def subsets(n: int) -> list:
    """Active image-token positions: none, one, a third (spread), all but one, all."""
    return [[], [n // 2], list(range(0, n, 3)), list(range(1, n)), list(range(n))]


def oracle(model: nn.Module, kwargs: dict):
    """Full call == eager, then each subset of `subsets` == the full call, really partial.
    Returns the controller."""
    model.eval()
    with torch.no_grad():
        reference = model(**kwargs)[0]
        compiled = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
        ctl = jano_compile.controller(compiled)
        full = compiled(**kwargs)[0]
        stats = ctl.stats()
        assert stats["rewritten"], stats["fallback_reason"]
        torch.testing.assert_close(full, reference, **TOLERANCE, msg=lambda m: f"full vs eager: {m}")
        n = stats["num_image_tokens"]
        for positions in subsets(n):
            ctl.set_active(torch.tensor(positions, dtype=torch.long))
            part = compiled(**kwargs)[0]
            assert ctl.last_call is not None and not ctl.last_call.full
            assert ctl.last_call.active == len(positions)
            torch.testing.assert_close(part, full, **TOLERANCE, msg=lambda m: f"|S|={len(positions)}: {m}")
    return ctl


def assert_not_rewritten(model: nn.Module, kwargs: dict, op: str, why: str):
    """The near miss: compiled, runs equal to eager, not rewritten, and the reason names
    `op` and says `why`."""
    model.eval()
    with torch.no_grad(), pytest.warns(UserWarning, match="not rewritten"):
        reference = model(**kwargs)[0]
        compiled = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
        ctl = jano_compile.controller(compiled)
        out = compiled(**kwargs)[0]
    stats = ctl.stats()
    assert not stats["rewritten"]
    reason = stats["fallback_reason"] or ""
    assert f"({op})" in reason and why in reason, reason
    torch.testing.assert_close(out, reference, **TOLERANCE)


class PatchDiT(nn.Module):
    """The frame of the tiny modules below (like tests/toy.py's ToyDiT): hidden_states
    [B, C, H, W] -> Conv2d patches [B, N, D] -> `layers` x (self-attention written by
    `attend`, MLP) -> [B, C, H, W]."""

    def __init__(self, channels=4, dim=32, layers=2):
        super().__init__()
        self.embed = nn.Conv2d(channels, dim, 2, stride=2)
        self.mlp = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.out = nn.Linear(dim, channels * 4)

    def attend(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        raise NotImplementedError

    def after_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The near misses put their token-moving op here."""
        return x

    def forward(self, hidden_states):
        b, c, h, w = hidden_states.shape
        x = self.embed(hidden_states).flatten(2).transpose(1, 2)        # [B, N, D]
        for layer, mlp in enumerate(self.mlp):
            x = x + self.attend(F.layer_norm(x, x.shape[-1:]), layer)
            x = x + mlp(F.gelu(x))
        x = self.after_blocks(x)
        out = self.out(x).reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return (out.reshape(b, c, h, w),)


# --------------------------------------------------------------------------- complex RoPE
class ComplexRopeDiT(PatchDiT):
    """Rotary embedding in complex numbers, as QwenImage and LuminaNext write it:

        q [B, N, H, Dh] -> view_as_complex(q.reshape(B, N, H, Dh/2, 2))   [B, N, H, Dh/2] c64
                        *  freqs [N, Dh/2] c64 (per token, built in forward)
                        -> view_as_real -> flatten(3)                     [B, N, H, Dh]
    """

    def __init__(self, heads=2, **kw):
        super().__init__(**kw)
        dim = self.embed.out_channels
        self.heads = heads
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in self.mlp)
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in self.mlp)

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h, d = x.shape
        inv_freq = 1.0 / (100.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        angles = torch.outer(torch.arange(n, dtype=torch.float32), inv_freq)
        freqs = torch.polar(torch.ones_like(angles), angles)                # [N, Dh/2] complex
        x_complex = torch.view_as_complex(x.float().reshape(b, n, h, -1, 2))
        return torch.view_as_real(x_complex * freqs[:, None, :]).flatten(3).type_as(x)

    def attend(self, x, layer):
        q, k, v = self.qkv[layer](x).unflatten(-1, (3 * self.heads, -1)).chunk(3, dim=2)
        q, k = self.rope(q), self.rope(k)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj[layer](a.transpose(1, 2).flatten(2))


class ComplexTokenPairs(ComplexRopeDiT):
    """Near miss: the token axis is the trailing pair of view_as_complex. With 2 image tokens
    each complex number is (token 0, token 1) and the complex multiply mixes the two."""

    def after_blocks(self, x):
        pair = torch.view_as_complex(x.transpose(1, 2).contiguous())          # [B, D] from 2 tokens
        turned = pair * torch.polar(torch.ones(()), torch.tensor(0.7))
        return x + torch.view_as_real(turned).transpose(1, 2)


def test_complex_rope_is_rewritten_and_exact():
    ctl = oracle(ComplexRopeDiT(), dict(hidden_states=torch.randn(2, 4, 8, 12)))
    assert ctl.stats()["num_image_tokens"] == 24


def test_complex_table_is_gathered():
    model = ComplexRopeDiT().eval()
    snap = snapshot(model, torch.randn(1, 4, 8, 12))
    (report,), (after,) = snap.reports, snap.after
    assert report.rewritten, report.reason
    assert count_calls(after, torch.view_as_complex) == count_calls(snap.before[0], torch.view_as_complex) == 4
    assert count_calls(after, torch.view_as_real) == 4
    gathered = [n for n in after.graph.nodes
                if n.target is torch.index_select and value(n.args[0]).is_complex()]
    assert gathered, "the complex RoPE table is gathered with the active rows"


def test_view_as_complex_over_tokens_is_not_rewritten():
    assert_not_rewritten(ComplexTokenPairs(), dict(hidden_states=torch.randn(1, 4, 2, 4)),
                         "view_as_complex", "token axis")


def test_view_as_complex_rope_of_diffusers_class():
    """NucleusMoE-Image: complex RoPE on a joint [text | image] sequence."""
    torch.manual_seed(0)
    model, kwargs = TINY["NucleusMoEImageTransformer2DModel"].build(1)
    ctl = oracle(model, dict(kwargs, return_dict=False))
    assert ctl.stats()["num_image_tokens"] == 24


# --------------------------------------------------------------------------- head repeats
class GroupedQueryDiT(PatchDiT):
    """Grouped-query attention: 4 query heads share 2 K/V heads, repeated on the head axis
    (Cosmos, Krea2) with `head_repeat`:

        k [B, 2, N, Dh] -> repeat_interleave(2, dim=1)                    [B, 4, N, Dh]
                           repeat(1, 2, 1, 1)                             [B, 4, N, Dh]
                           [:, :, None].expand(B, 2, 2, N, Dh).reshape    [B, 4, N, Dh]
    """

    def __init__(self, head_repeat="repeat_interleave", heads=4, kv_heads=2, **kw):
        super().__init__(**kw)
        dim = self.embed.out_channels
        self.head_repeat, self.heads, self.kv_heads = head_repeat, heads, kv_heads
        self.head_dim = dim // heads
        self.q = nn.ModuleList(nn.Linear(dim, dim) for _ in self.mlp)
        self.kv = nn.ModuleList(nn.Linear(dim, 2 * kv_heads * self.head_dim) for _ in self.mlp)
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in self.mlp)

    def repeat_heads(self, t: torch.Tensor) -> torch.Tensor:
        groups = self.heads // self.kv_heads
        if self.head_repeat == "repeat_interleave":
            return t.repeat_interleave(groups, dim=1)
        if self.head_repeat == "repeat":
            return t.repeat(1, groups, 1, 1)
        b, h, n, d = t.shape
        return t[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)

    def attend(self, x, layer):
        q = self.q[layer](x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = self.kv[layer](x).unflatten(-1, (2 * self.kv_heads, -1)).transpose(1, 2).chunk(2, dim=1)
        a = F.scaled_dot_product_attention(q, self.repeat_heads(k), self.repeat_heads(v))
        return self.proj[layer](a.transpose(1, 2).flatten(2))


class RepeatedTokens(GroupedQueryDiT):
    """Near miss: the same ops on the token axis. Repeating the tokens and taking a window
    shifts them: output token i holds token (i + N/2) // 2 (repeat_interleave) or
    (i + N/2) mod N (repeat)."""

    def after_blocks(self, x):
        n = x.shape[1]
        if self.head_repeat == "repeat_interleave":
            moved = x.repeat_interleave(2, dim=1)
        else:
            moved = x.repeat(1, 2, 1)
        return x + moved[:, n // 2:n // 2 + n]


@pytest.mark.parametrize("head_repeat", ["repeat_interleave", "repeat", "expand"])
def test_head_repeat_is_rewritten_and_exact(head_repeat):
    oracle(GroupedQueryDiT(head_repeat), dict(hidden_states=torch.randn(2, 4, 8, 12)))


@pytest.mark.parametrize("op", ["repeat_interleave", "repeat"])
def test_repeat_along_tokens_is_not_rewritten(op):
    assert_not_rewritten(RepeatedTokens(op), dict(hidden_states=torch.randn(1, 4, 8, 12)),
                         op, "along the token axis")


def test_repeat_interleave_heads_of_diffusers_class():
    """Krea2: repeat_interleave of K/V heads (num_key_value_heads < num_attention_heads)."""
    torch.manual_seed(0)
    model, kwargs = TINY["Krea2Transformer2DModel"].build(1)
    ctl = oracle(model, dict(kwargs, return_dict=False))
    assert ctl.stats()["num_image_tokens"] == 24
