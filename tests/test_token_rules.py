"""Token rules of issue 11 (part 2), one group per rule: complex-number RoPE
(`view_as_complex`, a complex per-token table, `view_as_real`, `flatten`), head repeats of
grouped-query attention (`repeat_interleave`, `repeat`, `expand` on the head axis),
attention of queries without image tokens to image keys (TO_IMAGE; `sdpa(q, q, q)`), the
exit of a model whose head computes on the latent grid (the tokens folded back before it), and
the exit of a model computing sequence-first [tokens, batch, channels], a cross-attention
per frame (the tokens split into frames folded into the batch, keys per frame), ops that
place image tokens by a runtime index, which must fall back with that reason. Last, ops that
mix image tokens (linear attention's sum over them, a convolution over their grid): they
run on operands completed from caches of every token (passes/token_mixing.py). Last, groups
of tokens folded into the batch at the entry and exit (Latte: frames [B*F, S, C], then
positions [B*S, F, C]), whose attention within each group runs the same way.

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
from jano_compile.passes.nodes import value

from .capture import count_calls, snapshot
from .toy import ToyDiT

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from coverage_models import TINY  # noqa: E402

TOLERANCE = dict(atol=1e-4, rtol=1e-4)


def subsets(n: int) -> list:
    """Active image-token positions: none, one, a third (spread), all but one, all."""
    return [[], [n // 2], list(range(0, n, 3)), list(range(1, n)), list(range(n))]


def rewritten_graph(model: nn.Module, *args, **kwargs):
    """(report, rewritten graph module) of a model dynamo captures as one graph, checked to be
    rewritten."""
    snap = snapshot(model, *args, **kwargs)
    (report,), (after,) = snap.reports, snap.after
    assert report.rewritten, report.reason
    return report, after


def oracle(model: nn.Module, kwargs: dict):
    """Full call == eager, then each subset of `subsets` == the full call, really partial;
    every output tensor is compared (an audio stream next to the image, say). Returns the
    controller."""
    model.eval()
    with torch.no_grad():
        reference = model(**kwargs)
        compiled = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
        ctl = jano_compile.controller(compiled)
        full = compiled(**kwargs)
        stats = ctl.stats()
        assert stats["rewritten"], stats["fallback_reason"]
        torch.testing.assert_close(full, reference, **TOLERANCE, msg=lambda m: f"full vs eager: {m}")
        n = stats["num_image_tokens"]
        for positions in subsets(n):
            ctl.set_active(torch.tensor(positions, dtype=torch.long))
            part = compiled(**kwargs)
            assert ctl.last_call is not None and not ctl.last_call.full
            assert ctl.last_call.active == len(positions)
            torch.testing.assert_close(part, full, **TOLERANCE, msg=lambda m: f"|S|={len(positions)}: {m}")
    return ctl


def image_tokens_of_class(cls: str, batch: int = 1) -> int:
    """The oracle on the tiny instance of diffusers class `cls` (benchmarks/coverage_models);
    returns how many image tokens the rewritten graph holds."""
    torch.manual_seed(0)
    model, kwargs = TINY[cls].build(batch)
    return oracle(model, dict(kwargs, return_dict=False)).stats()["num_image_tokens"]


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
    assert image_tokens_of_class("NucleusMoEImageTransformer2DModel") == 24


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
    assert image_tokens_of_class("Krea2Transformer2DModel") == 24


# --------------------------------------------------------------------------- attention to image keys
def heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, D] -> [B, H, L, D/H]"""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def heads_last(t: torch.Tensor) -> torch.Tensor:
    """[B, H, L, Dh] -> [B, L, H * Dh]"""
    return t.transpose(1, 2).flatten(2)


class SelfAttentionDiT(PatchDiT):
    """PatchDiT with plain multi-head self-attention: q, k, v [B, H, N, Dh]."""

    def __init__(self, heads=2, **kw):
        super().__init__(**kw)
        dim = self.embed.out_channels
        self.heads = heads
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in self.mlp)

    def attend(self, x, layer):
        q, k, v = (heads_first(t, self.heads) for t in self.qkv[layer](x).chunk(3, dim=-1))
        return heads_last(F.scaled_dot_product_attention(q, k, v))


class AudioVideoDiT(SelfAttentionDiT):
    """Two streams as LTX-2 runs them: image tokens [B, N, D] and an audio stream [B, L, D]
    (an input: every audio row is computed at every step). Per layer:

        image self-attention                     q, k, v [B, H, N, Dh]               SELF
        audio listens: q = audio [B, H, L, Dh],  k, v = image [B, H, N, Dh]         TO_IMAGE
        image looks:   q = image [B, H, N, Dh],  k, v = audio [B, H, L, Dh]         CROSS

    Returns (image [B, C, H, W], audio [B, L, C])."""

    def __init__(self, **kw):
        super().__init__(**kw)
        dim = self.embed.out_channels
        self.audio_q = nn.ModuleList(nn.Linear(dim, dim) for _ in self.mlp)
        self.image_kv = nn.ModuleList(nn.Linear(dim, 2 * dim) for _ in self.mlp)
        self.image_q = nn.ModuleList(nn.Linear(dim, dim) for _ in self.mlp)
        self.audio_kv = nn.ModuleList(nn.Linear(dim, 2 * dim) for _ in self.mlp)
        self.audio_out = nn.Linear(dim, self.embed.in_channels)

    def listen(self, audio, x, layer):
        """The audio stream's update from the image tokens."""
        q = heads_first(self.audio_q[layer](audio), self.heads)
        k, v = (heads_first(t, self.heads) for t in self.image_kv[layer](x).chunk(2, dim=-1))
        return heads_last(F.scaled_dot_product_attention(q, k, v))

    def look(self, x, audio, layer):
        q = heads_first(self.image_q[layer](x), self.heads)
        k, v = (heads_first(t, self.heads) for t in self.audio_kv[layer](audio).chunk(2, dim=-1))
        return heads_last(F.scaled_dot_product_attention(q, k, v))

    def forward(self, hidden_states, audio_states):
        b, c, h, w = hidden_states.shape
        x = self.embed(hidden_states).flatten(2).transpose(1, 2)        # [B, N, D]
        audio = audio_states                                           # [B, L, D]
        for layer, mlp in enumerate(self.mlp):
            x = x + self.attend(F.layer_norm(x, x.shape[-1:]), layer)
            audio = audio + self.listen(audio, x, layer)
            x = x + self.look(x, audio, layer)
            x = x + mlp(F.gelu(x))
        out = self.out(x).reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(b, c, h, w), self.audio_out(audio)


class AudioPerImageToken(AudioVideoDiT):
    """Near miss: the audio queries attend, for each image token, to that token's channels
    cut into a short sequence of H pieces. The image tokens sit on a batch axis of the
    attention (keys [B, N, H, Dh]), not on the axis its softmax runs over: a cache of key
    rows along that axis completes nothing, and the output holds image tokens."""

    def listen(self, audio, x, layer):
        b, n, _ = x.shape
        q = self.audio_q[layer](audio).unflatten(-1, (self.heads, -1))[:, :, 0]      # [B, L, Dh]
        q = q[:, None].expand(b, n, -1, -1)                                          # [B, N, L, Dh]
        k, v = (t.unflatten(-1, (self.heads, -1)) for t in self.image_kv[layer](x).chunk(2, dim=-1))
        per_token = F.scaled_dot_product_attention(q, k, v)                         # [B, N, L, Dh]
        return audio + per_token.mean(dim=1).repeat(1, 1, self.heads)


def audio_video_inputs(batch: int, audio_frames: int = 5) -> dict:
    return dict(hidden_states=torch.randn(batch, 4, 8, 12), audio_states=torch.randn(batch, audio_frames, 32))


def test_attention_to_image_keys_is_rewritten_and_exact():
    ctl = oracle(AudioVideoDiT(), audio_video_inputs(2))
    assert ctl.stats()["num_image_tokens"] == 24


def test_attention_to_image_keys_completes_keys_only():
    report, after = rewritten_graph(AudioVideoDiT().eval(), **audio_video_inputs(1))
    kinds = [a["kind"] for a in report.attention]
    assert kinds == ["self", "to_image", "cross"] * 2
    assert report.to_image_attention_count == 2
    # a K and a V cache for each self and each to-image attention, and the output cache
    assert len(report.caches) == 2 * 4 + 1
    listens = [n for n in after.graph.nodes if n.target is F.scaled_dot_product_attention][1::3]
    assert len(listens) == 2
    for node in listens:
        query, key, value_ = node.args[:3]
        assert tuple(value(query).shape) == (1, 2, 5, 16), "the audio queries are untouched"
        assert key.target is value_.target is torch.ops.aten.index_copy_.default


def test_attention_to_image_tokens_on_a_batch_axis_is_not_rewritten():
    """The near miss (an eager run, then a fallback whose reason names sdpa)."""
    model = AudioPerImageToken()
    model.eval()
    kwargs = audio_video_inputs(1)
    with torch.no_grad(), pytest.warns(UserWarning, match="not rewritten"):
        reference = model(**kwargs)
        compiled = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
        ctl = jano_compile.controller(compiled)
        out = compiled(**kwargs)
    stats = ctl.stats()
    assert not stats["rewritten"]
    reason = stats["fallback_reason"] or ""
    assert "(scaled_dot_product_attention)" in reason and "not on the sequence axis" in reason, reason
    torch.testing.assert_close(out, reference, **TOLERANCE)


class SharedQueryKeyValue(PatchDiT):
    """Attention of one tensor to itself, `sdpa(q, q, q)` [B, H, N, Dh]: the query stays
    gathered while the same tensor, as keys and values, is completed from one cache."""

    def __init__(self, heads=2, **kw):
        super().__init__(**kw)
        dim = self.embed.out_channels
        self.heads = heads
        self.q = nn.ModuleList(nn.Linear(dim, dim) for _ in self.mlp)

    def attend(self, x, layer):
        q = heads_first(self.q[layer](x), self.heads)
        return heads_last(F.scaled_dot_product_attention(q, q, q))


def test_query_as_key_and_value_is_rewritten_and_exact():
    oracle(SharedQueryKeyValue(), dict(hidden_states=torch.randn(2, 4, 8, 12)))


def test_query_as_key_and_value_shares_one_cache():
    report, after = rewritten_graph(SharedQueryKeyValue().eval(), torch.randn(1, 4, 8, 12))
    assert sorted(c["role"] for c in report.caches) == ["k_cache", "k_cache", "out_cache"]
    attentions = [n for n in after.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert attentions
    for node in attentions:
        query, key, value_ = node.args[:3]
        assert key is value_ and key.target is torch.ops.aten.index_copy_.default
        assert query is key.args[3], "the query is the fresh (gathered) tensor, not the completed cache"


@pytest.mark.parametrize("cls, audio", [("LTX2VideoTransformer3DModel", None),
                                        ("Kandinsky6Transformer3DModel", (9, 4))])
def test_attention_to_image_keys_of_diffusers_class(cls, audio):
    """LTX-2, and Kandinsky 6 given audio latents [B, 9, 4]: audio queries attend to video
    keys (video-to-audio attention); the audio output is compared too."""
    torch.manual_seed(0)
    model, kwargs = TINY[cls].build(1)
    if audio is not None:
        kwargs["audio_hidden_states"] = torch.randn(1, *audio)
    snap = snapshot(model.eval(), **kwargs, return_dict=False)
    assert snap.reports[0].to_image_attention_count == 2
    torch._dynamo.reset()
    ctl = oracle(model, dict(kwargs, return_dict=False))
    assert ctl.stats()["num_image_tokens"] == 48


# --------------------------------------------------------------------------- exit before the fold into the grid
class GridHeadDiT(SelfAttentionDiT):
    """The blocks run on tokens [B, N, D]; the head folds them back into the latent grid and
    computes there, as Kandinsky 5 and 6 do:

        h   = blocks(x)                                        [B, N, D]       <- the exit
        g   = h.reshape(B, h, w, D)                            [B, h, w, D]
        out = linear(layer_norm(g) * (1 + scale) + shift)      [B, h, w, 4C]   (scale, shift
              from the timestep, [B, 1, 1, D]), then unpatchify [B, C, 2h, 2w]
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.modulation = nn.Linear(1, 2 * self.embed.out_channels)

    def fold(self, x: torch.Tensor, embedded: torch.Tensor, grid: tuple) -> torch.Tensor:
        """[B, N, D] -> [B, h, w, D]"""
        return x.reshape(x.shape[0], *grid, x.shape[-1])

    def forward(self, hidden_states, timestep):
        b, c, h, w = hidden_states.shape
        embedded = self.embed(hidden_states).flatten(2).transpose(1, 2)     # [B, N, D]
        x = embedded
        for layer, mlp in enumerate(self.mlp):
            x = x + self.attend(F.layer_norm(x, x.shape[-1:]), layer)
            x = x + mlp(F.gelu(x))
        g = self.fold(x, embedded, (h // 2, w // 2))
        shift, scale = self.modulation(timestep[:, None]).chunk(2, dim=-1)   # [B, D] each
        g = F.layer_norm(g, g.shape[-1:]) * (1 + scale[:, None, None]) + shift[:, None, None]
        out = self.out(g).reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return (out.reshape(b, c, h, w),)


class GridHeadWithEmbeddingSkip(GridHeadDiT):
    """Near miss: the head also folds the patch embedding (from before the blocks) into the
    grid and adds it. Two token tensors reach the grid; taking either one as the exit would
    hand the other's image tokens to the output ungathered or unscattered."""

    def fold(self, x, embedded, grid):
        return super().fold(x, embedded, grid) + super().fold(embedded, embedded, grid)


def grid_head_inputs(batch: int) -> dict:
    return dict(hidden_states=torch.randn(batch, 4, 8, 12), timestep=torch.rand(batch))


def test_exit_before_the_fold_into_the_grid_is_rewritten_and_exact():
    ctl = oracle(GridHeadDiT(), grid_head_inputs(2))
    assert ctl.stats()["num_image_tokens"] == 24


def test_exit_is_the_token_tensor_the_head_folds():
    report, after = rewritten_graph(GridHeadDiT().eval(), **grid_head_inputs(1))
    exit_node = next(n for n in after.graph.nodes if n.name == report.exit)
    assert tuple(value(exit_node).shape) == (1, 24, 32)
    (fold,) = [n for n in after.graph.nodes if n.op == "call_method" and n.target == "reshape"
               and len(value(n).shape) == 4 and value(n).shape[-1] == 32]
    assert fold.args[0].target is torch.index_copy, "the head folds the scattered (full) tokens"


def test_two_token_tensors_folded_into_the_grid_are_not_rewritten():
    model = GridHeadWithEmbeddingSkip().eval()
    kwargs = grid_head_inputs(1)
    with torch.no_grad(), pytest.warns(UserWarning, match="not rewritten"):
        reference = model(**kwargs)
        compiled = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
        ctl = jano_compile.controller(compiled)
        out = compiled(**kwargs)
    stats = ctl.stats()
    assert not stats["rewritten"]
    assert "folded into a grid" in stats["fallback_reason"] and "is open" in stats["fallback_reason"]
    torch.testing.assert_close(out, reference, **TOLERANCE)


@pytest.mark.parametrize("cls", ["Kandinsky5Transformer3DModel", "Kandinsky6Transformer3DModel"])
def test_exit_before_the_fold_of_diffusers_class(cls):
    """Kandinsky 5 and 6: blocks on [B, N, C], the output layer on [B, F, H, W, C]."""
    assert image_tokens_of_class(cls) == 48


# --------------------------------------------------------------------------- sequence-first blocks
class SequenceFirstDiT(SelfAttentionDiT):
    """The blocks run sequence-first, as ErnieImage's do:

        x   = patches(hidden_states).transpose(0, 1)        [N, B, D]
        s   = cat([x, text], dim=0)                         [N + T, B, D]
        s   = s + attend(s.permute(1, 0, 2)).permute(1, 0, 2)   (attention batch-first)
        img = linear(s)[:N]                                 [N, B, 4C]  <- last computed tensor
        out = unpatchify(img.transpose(0, 1))               [B, N, 4C] <- the exit
    """

    def __init__(self, text_tokens=5, **kw):
        super().__init__(**kw)
        self.text = nn.Parameter(torch.randn(text_tokens, 1, self.embed.out_channels))

    def to_batch_first(self, img: torch.Tensor) -> torch.Tensor:
        """[N, B, C] -> [B, N, C]"""
        return img.transpose(0, 1)

    def forward(self, hidden_states):
        b, c, h, w = hidden_states.shape
        x = self.embed(hidden_states).flatten(2).permute(2, 0, 1)          # [N, B, D]
        n = x.shape[0]
        s = torch.cat([x, self.text.expand(-1, b, -1)], dim=0)            # [N + T, B, D]
        for layer, mlp in enumerate(self.mlp):
            s = s + self.attend(F.layer_norm(s, s.shape[-1:]).permute(1, 0, 2), layer).permute(1, 0, 2)
            s = s + mlp(F.gelu(s))
        img = self.to_batch_first(self.out(s)[:n])                        # [B, N, 4C]
        out = img.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return (out.reshape(b, c, h, w),)


class SequenceFirstReshapedToBatch(SequenceFirstDiT):
    """Near miss: the head reshapes [N, B, C] to [B, N, C] instead of transposing it. With
    B = 2, row 0 of the result holds tokens 0..N/2-1 of both samples: tokens and batch mix."""

    def to_batch_first(self, img):
        return img.reshape(img.shape[1], img.shape[0], img.shape[2])


def test_sequence_first_exit_is_rewritten_and_exact():
    ctl = oracle(SequenceFirstDiT(), dict(hidden_states=torch.randn(2, 4, 8, 12)))
    assert ctl.stats()["num_image_tokens"] == 24


def test_sequence_first_exit_is_the_batch_first_tensor():
    report, after = rewritten_graph(SequenceFirstDiT().eval(), torch.randn(1, 4, 8, 12))
    exit_node = next(n for n in after.graph.nodes if n.name == report.exit)
    assert exit_node.target == "transpose" and tuple(value(exit_node).shape) == (1, 24, 16)
    (gather,) = [n for n in after.graph.nodes if n.target is torch.index_select and n.args[0].name == report.entry]
    assert gather.args[1] == 0, "the entry [N, B, D] is gathered on its token axis 0"
    assert report.attention[0]["layout"] == "[image 24 | text 5]"


def test_sequence_first_reshaped_to_batch_is_not_rewritten():
    assert_not_rewritten(SequenceFirstReshapedToBatch(), dict(hidden_states=torch.randn(2, 4, 8, 12)),
                         "reshape", "splits or merges the token axis")


def test_sequence_first_exit_of_diffusers_class():
    """ErnieImage: [image | text] sequence-first, the output layer's image rows transposed."""
    assert image_tokens_of_class("ErnieImageTransformer2DModel") == 24


# --------------------------------------------------------------------------- per-frame cross-attention
class FrameCrossAttentionDiT(SelfAttentionDiT):
    """SelfAttentionDiT plus WanAnimate's face adapter: the N tokens split into `frames`
    frames folded into the batch, q [B*T, H, N/T, Dh], attending to per-frame features
    `face` [B, T, L, D] as k, v [B*T, H, L, Dh]; folded back to [B, N, D]."""

    def __init__(self, frames=3, **kw):
        super().__init__(**kw)
        dim = self.embed.out_channels
        self.frames = frames
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)

    def per_frame(self, t: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B*T, H, N/T, Dh]"""
        t = t.unflatten(2, (self.heads, -1)).unflatten(1, (self.frames, -1)).flatten(0, 1)
        return t.transpose(1, 2)

    def frame_keys(self, x: torch.Tensor, face: torch.Tensor):
        """k, v [B*T, H, L, Dh] from the features of each frame."""
        k, v = self.to_kv(face).flatten(0, 1).chunk(2, dim=-1)
        return heads_first(k, self.heads), heads_first(v, self.heads)

    def forward(self, hidden_states, face):
        b, c, h, w = hidden_states.shape
        x = self.embed(hidden_states).flatten(2).transpose(1, 2)        # [B, N, D]
        for layer, mlp in enumerate(self.mlp):
            x = x + self.attend(F.layer_norm(x, x.shape[-1:]), layer)
            k, v = self.frame_keys(x, face)
            out = F.scaled_dot_product_attention(self.per_frame(self.to_q(x)), k, v)
            x = x + out.transpose(1, 2).flatten(2).unflatten(0, (b, self.frames)).flatten(1, 2)
            x = x + mlp(F.gelu(x))
        out = self.out(x).reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return (out.reshape(b, c, h, w),)


class FrameSelfAttention(FrameCrossAttentionDiT):
    """Not rewritable: the keys are the frame's own image tokens (attention within each
    frame), so a gathered token would need its whole frame's keys."""

    def frame_keys(self, x, face):
        k, v = self.to_kv(x).chunk(2, dim=-1)
        return self.per_frame(k), self.per_frame(v)


def frame_inputs(batch: int) -> dict:
    return dict(hidden_states=torch.randn(batch, 4, 8, 12), face=torch.randn(batch, 3, 5, 32))


@pytest.mark.parametrize("batch", [1, 2])
def test_cross_attention_per_frame_is_rewritten_and_exact(batch):
    ctl = oracle(FrameCrossAttentionDiT(), frame_inputs(batch))
    assert ctl.stats()["num_image_tokens"] == 24


def test_self_attention_per_frame_is_not_rewritten():
    assert_not_rewritten(FrameSelfAttention(), frame_inputs(1), "scaled_dot_product_attention",
                         "attention within frames whose keys hold image tokens")


def test_cross_attention_per_frame_of_diffusers_class():
    """WanAnimate's face adapter: 72 tokens in 3 frames attend to 3 face features each."""
    assert image_tokens_of_class("WanAnimateTransformer3DModel", 2) == 72


# --------------------------------------------------------------------------- tokens placed by a runtime index
class TokensPlacedByIndex(SelfAttentionDiT):
    """Not rewritable: the image tokens are written into a joint sequence [N + T, D] at
    positions given by an input (MiniMax-H3's `video_indices`), so which row holds which
    token is data; the blocks then run on the joint sequence."""

    def forward(self, hidden_states, image_rows):
        b, c, h, w = hidden_states.shape
        x = self.embed(hidden_states).flatten(2).transpose(1, 2)                  # [B, N, D]
        joint = x.new_zeros(b, x.shape[1] + 3, x.shape[2]).index_copy(1, image_rows, x)
        for layer, mlp in enumerate(self.mlp):
            joint = joint + self.attend(F.layer_norm(joint, joint.shape[-1:]), layer)
        x = joint.index_select(1, image_rows)
        out = self.out(x).reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return (out.reshape(b, c, h, w),)


def test_tokens_placed_by_a_runtime_index_are_not_rewritten():
    rows = torch.randperm(27)[:24]
    assert_not_rewritten(TokensPlacedByIndex(), dict(hidden_states=torch.randn(1, 4, 8, 12), image_rows=rows),
                         "index_copy", "positions given by")


# --------------------------------------------------------------------------- ops that mix image tokens
class LinearAttentionConvDiT(PatchDiT):
    """Sana's blocks in small: linear attention and a Mix-FFN whose depthwise convolution
    runs over the latent grid. Per layer:

        q, k = relu(linear(x)) [B, H, Dh, N], [B, H, N, Dh]; v = linear(x) [B, H, Dh, N]
        v1 = pad(v, (0, 0, 0, 1), value=1)     [B, H, Dh+1, N]   a ones channel (token-wise)
        s  = v1 @ k                            [B, H, Dh+1, Dh]  sum over every token (mixing)
        o  = s @ q                             [B, H, Dh+1, N]   per query token
        a  = o[:, :, :-1] / o[:, :, -1:]
        g  = x.unflatten(1, (h, w)).permute(0, 3, 1, 2)           [B, D, h, w]
        f  = conv1x1(silu(depthwise3x3(conv1x1(g))))               the 3x3 mixes neighbours
        x += f.flatten(2).transpose(1, 2)                          [B, N, D]
    """

    def __init__(self, heads=2, grid=(4, 6), **kw):
        super().__init__(**kw)
        dim = self.embed.out_channels
        self.heads, self.grid = heads, grid
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in self.mlp)
        self.expand = nn.ModuleList(nn.Conv2d(dim, 2 * dim, 1) for _ in self.mlp)
        self.depthwise = nn.ModuleList(nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim) for _ in self.mlp)
        self.project = nn.ModuleList(nn.Conv2d(2 * dim, dim, 1, bias=False) for _ in self.mlp)

    def attend(self, x, layer):
        q, k, v = (t.transpose(1, 2).unflatten(1, (self.heads, -1)) for t in self.qkv[layer](x).chunk(3, dim=-1))
        q, k = F.relu(q), F.relu(k).transpose(2, 3)
        v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)
        o = torch.matmul(torch.matmul(v, k), q)
        o = o[:, :, :-1] / (o[:, :, -1:] + 1e-15)
        return o.flatten(1, 2).transpose(1, 2)

    def mix_ffn(self, x, layer):
        g = x.unflatten(1, self.grid).permute(0, 3, 1, 2)
        g = self.depthwise[layer](F.silu(self.expand[layer](g)))
        return self.project[layer](g).flatten(2, 3).permute(0, 2, 1)

    def forward(self, hidden_states):
        b, c, h, w = hidden_states.shape
        x = self.embed(hidden_states).flatten(2).transpose(1, 2)        # [B, N, D]
        for layer in range(len(self.mlp)):
            x = x + self.attend(F.layer_norm(x, x.shape[-1:]), layer)
            x = x + self.mix_ffn(F.layer_norm(x, x.shape[-1:]), layer)
        x = self.after_blocks(x)
        out = self.out(x).reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return (out.reshape(b, c, h, w),)


class StridedGridConv(LinearAttentionConvDiT):
    """Near miss: a convolution with stride 2 over the grid ([B, D, 4, 6] -> [B, D, 2, 3]),
    upsampled back: each output token reads a coarser grid, not one position per token."""

    def __init__(self, **kw):
        super().__init__(**kw)
        dim = self.embed.out_channels
        self.down = nn.Conv2d(dim, dim, 2, stride=2)

    def after_blocks(self, x):
        g = self.down(x.unflatten(1, self.grid).permute(0, 3, 1, 2))
        up = g.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        return x + up.flatten(2, 3).transpose(1, 2)


class RunningSumOverTokens(LinearAttentionConvDiT):
    """Near miss: a cumulative sum over the tokens: each output token reads every token
    before it (its result holds image tokens, unlike a sum over all of them)."""

    def after_blocks(self, x):
        return x + x.cumsum(dim=1) / x.shape[1]


def test_mean_over_tokens_is_rewritten_and_exact():
    """tests/toy.py's `x + x.mean(dim=1, keepdim=True)` (once the near miss): x is completed
    from a cache of every token, the mean is taken over all N, each active token adds it."""
    ctl = oracle(ToyDiT(token_mean=True), dict(hidden_states=torch.randn(2, 4, 8, 8)))
    assert ctl.stats()["num_image_tokens"] == 16


def test_token_mixing_ops_are_rewritten_and_exact():
    ctl = oracle(LinearAttentionConvDiT(), dict(hidden_states=torch.randn(2, 4, 8, 12)))
    assert ctl.stats()["num_image_tokens"] == 24


def test_token_mixing_ops_read_completed_caches():
    report, after = rewritten_graph(LinearAttentionConvDiT().eval(), torch.randn(1, 4, 8, 12))
    # per layer: the padded values, the key features, the depthwise conv's input grid
    assert sorted(c["role"] for c in report.caches) == ["out_cache"] + ["token_cache"] * 6
    assert [len(m["operands"]) for m in report.mixing] == [2, 1] * 2, report.mixing
    contractions = [n for n in after.graph.nodes if n.target is torch.matmul and value(n).shape[-2:] == (17, 16)]
    assert len(contractions) == 2
    for node in contractions:
        assert all(a.target is torch.ops.aten.index_copy_.default for a in node.args[:2])
    assert count_calls(after, F.pad) == 0, "the ones channel is a cat (constant_pad_nd fixes n)"
    convs = [n for n in after.graph.nodes if n.target is torch.conv2d and n.args[0].op != "placeholder"]
    assert len(convs) == 2, "only the depthwise convs run (on the whole grid); the 1x1 convs are linear"
    assert all(value(n).shape[-2:] == (4, 6) for n in convs)
    assert count_calls(after, F.linear) >= 4


def test_the_full_step_variant_fills_the_token_caches():
    """dense_variant: the full-step variant writes every row of the token caches (a partial
    step after it equals it); the skip tail reads none."""
    from jano_compile.rewrite import rewrite_graph
    model = LinearAttentionConvDiT().eval()
    captured = {}

    def backend(gm, example_inputs):
        captured["result"] = rewrite_graph(gm, example_inputs)
        captured["inputs"] = example_inputs
        return gm.forward

    x = torch.randn(1, 4, 8, 12)
    with torch.no_grad():
        reference = model(x)[0]
        torch.compile(model, backend=backend, dynamic=False)(x)
        result, inputs = captured["result"], captured["inputs"]
        sig = result.report.signature
        n = sig.num_image_tokens
        tokens = [i for i, s in enumerate(sig.states) if s.role.value == "token_cache"]
        states = [s.allocate() for s in sig.states]
        assert all(states[i].abs().sum() == 0 for i in tokens)
        (full,) = result.full_variant()(*sig.call_args(inputs, torch.arange(n), states))
        torch.testing.assert_close(full, reference, **TOLERANCE)
        assert all(states[i].abs().sum() > 0 for i in tokens)
        (part,) = result.graph(*sig.call_args(inputs, torch.arange(0, n, 3), states))
        torch.testing.assert_close(part, full, **TOLERANCE)
        assert result.skip_tail is not None


def test_strided_conv_over_the_grid_is_not_rewritten():
    assert_not_rewritten(StridedGridConv(), dict(hidden_states=torch.randn(1, 4, 8, 12)),
                         "conv2d", "its output is not one per token")


def test_running_sum_over_tokens_is_not_rewritten():
    assert_not_rewritten(RunningSumOverTokens(), dict(hidden_states=torch.randn(1, 4, 8, 12)),
                         "cumsum", "each output token reads the tokens before it")


@pytest.mark.parametrize("cls, tokens", [("SanaTransformer2DModel", 24), ("SanaVideoTransformer3DModel", 48)])
def test_token_mixing_of_diffusers_class(cls, tokens):
    """Sana: linear attention and a depthwise conv over the 4 x 6 grid; SanaVideo: linear
    attention with RoPE and a sum of the keys over all tokens, a conv over each frame (frames
    folded into the batch) and one over the frames."""
    assert image_tokens_of_class(cls) == tokens
    torch._dynamo.reset()
    assert image_tokens_of_class(cls, 2) == tokens


# --------------------------------------------------------------------------- groups folded into the batch
class FoldedVideoDiT(nn.Module):
    """Latte's blocks in small: a video [B, C, F, H, W] is patched frame by frame, so the
    blocks run with the frames folded into the batch. A spatial block attends within each
    frame ([B*F, S, D]); the tokens are then rearranged to one row per position
    ([B*S, F, D]) and a temporal block attends across the frames at each position. Each
    block is modulated per row of its layout (a table [rows, 1, D]: per frame, per
    position), the first temporal block adds a table per frame [1, F, D]. Entry and exit
    are in the frame layout [B*F, S, D]."""

    def __init__(self, channels=4, dim=32, heads=2, frames=3, layers=2):
        super().__init__()
        self.frames, self.heads = frames, heads
        self.embed = nn.Conv2d(channels, dim, 2, stride=2)
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(2 * layers))
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(2 * layers))
        self.modulation = nn.ModuleList(nn.Linear(dim, dim) for _ in range(2 * layers))
        self.frame_table = nn.Parameter(torch.randn(1, frames, dim) * 0.1)
        self.out = nn.Linear(dim, channels * 4)

    def attend(self, x, block):
        """Self-attention over axis 1 of x [rows, L, D], rows folded into the batch."""
        q, k, v = self.qkv[block](F.layer_norm(x, x.shape[-1:])).chunk(3, dim=-1)
        q, k, v = (t.view(x.shape[0], -1, self.heads, x.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        a = self.after_attention(F.scaled_dot_product_attention(q, k, v), block)
        return self.proj[block](a.transpose(1, 2).reshape(x.shape[0], -1, x.shape[-1]))

    def after_attention(self, a, block):
        """The near miss puts its token-moving op here."""
        return a

    def modulate(self, x, context, block):
        """x [rows, L, D] * (1 + scale [rows, 1, D]): one scale per row of the layout."""
        rows = x.shape[0]
        scale = self.modulation[block](context).repeat_interleave(rows // context.shape[0], dim=0)
        return x * (1 + scale[:, None])

    def forward(self, hidden_states, context):
        b, c, f, h, w = hidden_states.shape
        frames = hidden_states.permute(0, 2, 1, 3, 4).reshape(-1, c, h, w)
        x = self.embed(frames).flatten(2).transpose(1, 2)                    # [B*F, S, D]
        s, d = x.shape[1], x.shape[2]
        for layer in range(len(self.qkv) // 2):
            spatial, temporal = 2 * layer, 2 * layer + 1
            x = x + self.modulate(self.attend(x, spatial), context, spatial)
            x = x.reshape(b, -1, s, d).permute(0, 2, 1, 3).reshape(-1, f, d)      # [B*S, F, D]
            if layer == 0:
                x = x + self.frame_table
            x = x + self.modulate(self.attend(x, temporal), context, temporal)
            x = x.reshape(b, -1, f, d).permute(0, 2, 1, 3).reshape(-1, s, d)      # [B*F, S, D]
        out = self.out(x).reshape(-1, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, h, w)
        return (out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4),)


class RunningSumOverFrames(FoldedVideoDiT):
    """Near miss: the temporal attention's output is summed up over the frames before it
    (cumsum along the frame axis of [B*S, H, F, D]): each output token reads the earlier
    frames' tokens at its position, which no cache of one layer's operands completes."""

    def after_attention(self, a, block):
        return a.cumsum(dim=2) if block % 2 else a


def folded_inputs(batch: int) -> dict:
    return dict(hidden_states=torch.randn(batch, 4, 3, 8, 12), context=torch.randn(batch, 32))


@pytest.mark.parametrize("batch", [1, 2])
def test_attention_within_groups_folded_into_the_batch_is_rewritten_and_exact(batch):
    ctl = oracle(FoldedVideoDiT(), folded_inputs(batch))
    assert ctl.stats()["num_image_tokens"] == 3 * 24


def test_attention_within_groups_folded_into_the_batch_runs_on_completed_operands():
    report, after = rewritten_graph(FoldedVideoDiT().eval(), **folded_inputs(1))
    # per attention (2 layers x spatial, temporal): q, k and v completed from token caches
    assert sorted(c["role"] for c in report.caches) == ["out_cache"] + ["token_cache"] * 12
    attention = [n for n in after.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert [tuple(value(n).shape) for n in attention] == [(3, 2, 24, 16), (24, 2, 3, 16)] * 2
    for node in attention:      # dense copies of the completed operands, not views of the caches
        assert all(a.op == "call_method" and a.target == "contiguous" and a.args[0].target == "reshape"
                   for a in node.args[:3])


def test_running_sum_over_frames_is_not_rewritten():
    assert_not_rewritten(RunningSumOverFrames(), folded_inputs(1), "cumsum",
                         "not known to be token-wise")


def test_attention_within_groups_folded_into_the_batch_of_diffusers_class():
    """Latte: 2 frames of 4 x 6 tokens, spatial and temporal blocks, entry and exit
    [B*F, S, C]; at batch 2 the batch axis holds (sample, frame) rows."""
    assert image_tokens_of_class("LatteTransformer3DModel", 2) == 48


# --------------------------------------------------------------------------- the rule tables
def test_rule_tables_give_one_rule_per_op():
    """The tables from op to rule (passes/token_rules) refuse a second, different rule for
    an op, accept the same rule named twice (cumsum is a reduction and order-dependent), and
    cannot be changed once built."""
    from jano_compile.passes.token_rules import GRID_RULES, RULES, by_key, elementwise

    with pytest.raises(ValueError, match="two token rules for 'add': pointwise and linear"):
        by_key((["add", "mul"], elementwise.pointwise), (["add"], elementwise.linear))
    table = by_key((["cumsum", "sum"], elementwise.reduction), (["cumsum"], elementwise.reduction))
    assert dict(table) == {"cumsum": elementwise.reduction, "sum": elementwise.reduction}
    for rules in (RULES, GRID_RULES):
        with pytest.raises(TypeError):
            rules["add"] = elementwise.linear
    assert RULES["cumsum"] is RULES["sum"] is elementwise.reduction


# --------------------------------------------------------------------------- the model's own node names
class CountNamedOut(nn.Module):
    """An output head whose graph holds a node named `num_active`, as jano names its count
    of active tokens, beside a literal of the token count that the rewrite ties to that count."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        num_active = x.new_ones(x.shape[:2]).sum(-1)                   # [B]: the model's, not jano's
        x = x.reshape(x.shape[0], x.shape[1], 2, -1).flatten(2)       # [B, N, D]: N becomes n
        return self.linear(x) * (num_active / num_active).reshape(-1, 1, 1)


def test_a_node_named_like_janos_count_does_not_stand_in_for_it():
    """jano finds its shared nodes by a tag, not by name: with the model's own `num_active`
    in the graph (dynamo names nodes after variables), the literal takes jano's count of
    active tokens and the rewrite is exact (found by name, the model's tensor became the
    size and the rewrite fell back)."""
    model = ToyDiT()
    model.out = CountNamedOut(model.out)
    kwargs = dict(hidden_states=torch.randn(1, 4, 8, 8))
    oracle(model, kwargs)
    from jano_compile.passes.token_inputs import SHARED
    _, after = rewritten_graph(model, **kwargs)
    named = [n for n in after.graph.nodes if n.name.startswith("num_active")]
    (count,) = [n for n in named if n.meta.get(SHARED) == "num_active"]
    assert count.target == "size" and len(named) >= 2, [n.name for n in named]


def test_ltx2_split_rope_written_in_place_with_addcmul_is_rewritten_exactly():
    """LTX-2 with `rope_type="split"` rotates queries and keys with an in-place `addcmul_`,
    a pointwise op (it ran unrewritten, "not known to be token-wise")."""
    import diffusers
    torch.manual_seed(0)
    tiny = TINY["LTX2VideoTransformer3DModel"]
    model = getattr(diffusers, tiny.cls)(**{**tiny.init, "rope_type": "split"})
    assert oracle(model, dict(tiny.inputs(1), return_dict=False)).stats()["num_image_tokens"] == 48
