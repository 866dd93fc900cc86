"""Whatever the token analysis meets ends as a fallback with its reason, never as an exception.

Models jano does not rewrite (a plain MLP, and diffusers transformers whose token layout the
analysis does not follow) run through the backend with the eager model's output, and every
graph's report says why it was left alone, in the analysis' own words (never the
"internal error" safety net of `rewrite_graph`). Hand-built graphs pin the corner cases: an
empty output tuple, an operand with no recorded shape, and example values taken away from
node after node of real graphs.
"""
import warnings

import diffusers as D
import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import jano_compile
from jano_compile.passes import NoImageTokens, Unrewritable, token_layout
from jano_compile.passes.token_layout import _output_path
from jano_compile.rewrite import rewrite_graph

from .capture import snapshot
from .models import FAMILIES
from .oracle import check_oracle
from .toy import ToyDiT

INTERNAL = "internal error"


# --------------------------------------------------------------------------- tiny models
def _t(b, value=500.0):
    return torch.full((b,), value)


def mlp(b=2):
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    return model, (torch.randn(b, 8),), {}


def cosmos(b=1):
    # concat_padding_mask=False: the padding mask is resized with torchvision, not installed
    model = D.CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=1,
        mlp_ratio=2.0, text_embed_dim=16, adaln_lora_dim=8, max_size=(4, 16, 16),
        patch_size=(1, 2, 2), concat_padding_mask=False, extra_pos_embed_type="learnable")
    return model, (), dict(hidden_states=torch.randn(b, 4, 2, 8, 8), timestep=_t(b),
                           encoder_hidden_states=torch.randn(b, 5, 16), return_dict=False)


def qwenimage21(b=1):
    # one target image of 2 x 4 latent tokens = 2 vision-language slots of 2 x 2 tokens each,
    # after 4 text positions
    model = D.QwenImage21Transformer2DModel(
        patch_size=1, in_channels=8, out_channels=8, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, context_in_dim=16, mlp_ratio=2, axes_dims_rope=(4, 6, 6))
    img_mask = torch.zeros(b, 6, dtype=torch.bool)
    img_mask[:, 4:] = True
    return model, (), dict(hidden_states=torch.randn(b, 8, 8),
                           encoder_hidden_states=torch.randn(b, 4, 16),
                           timestep=torch.full((b,), 0.5), img_shapes=[[(1, 2, 4)]] * b,
                           img_mask=img_mask, return_dict=False)


def wan_animate(b=1):
    # 3 latent frames = 2 pose frames + 1; 5 face frames of 8 x 8 pixels -> 2 motion frames + pad
    model = D.WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=12,
        latent_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1,
        image_dim=None, rope_max_seq_len=32, motion_encoder_channel_sizes={"8": 4, "4": 4},
        motion_encoder_size=8, motion_style_dim=8, motion_dim=4, motion_encoder_dim=8,
        face_encoder_hidden_dim=8, face_encoder_num_heads=2, inject_face_latents_blocks=1)
    return model, (), dict(hidden_states=torch.randn(b, 12, 3, 8, 8), timestep=_t(b),
                           encoder_hidden_states=torch.randn(b, 5, 16),
                           pose_hidden_states=torch.randn(b, 4, 2, 8, 8),
                           face_pixel_values=torch.randn(b, 3, 5, 8, 8), return_dict=False)


def latte(b=1):
    model = D.LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
        cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=16,
        norm_type="ada_norm_single", num_embeds_ada_norm=1000, video_length=2)
    return model, (), dict(hidden_states=torch.randn(b, 4, 2, 8, 8), timestep=_t(b),
                           encoder_hidden_states=torch.randn(b, 5, 16), return_dict=False)


# builder, and a phrase one graph's reason must hold (None: any reason of the analysis)
NOT_REWRITTEN = {
    "mlp": (mlp, "is not [batch, tokens, channels]"),
    "qwenimage21": (qwenimage21, "the graph returns no tensor"),
}


def assert_rewritten_and_exact(model, args, kwargs):
    """Compiled with jano (eager lowering): rewritten, and its output equals eager."""
    model.eval()
    with torch.no_grad():
        reference = model(*args, **kwargs)[0]
        f = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
        torch.testing.assert_close(f(*args, **kwargs)[0], reference, atol=1e-4, rtol=1e-4)
    stats = jano_compile.controller(f).stats()
    assert stats["rewritten"], stats["fallback_reason"]


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_latent_passed_positionally_through_a_wrapper_is_rewritten_and_exact(family):
    """diffusers wraps FLUX's and SD3's forward in `apply_lora_scale(self, *args, **kwargs)`,
    so dynamo names a positional latent `L['args'][0]` (Sana's pipelines pass it so); it fell
    back with "no `hidden_states` input found"."""
    model, kwargs, n = FAMILIES[family].build(b=1)
    model.eval()
    latent = kwargs.pop("hidden_states")
    with torch.no_grad():
        reference = model(latent, **kwargs, return_dict=False)[0]
        f = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
        ctl = jano_compile.controller(f)
        full = f(latent, **kwargs, return_dict=False)[0]
        assert ctl.stats()["rewritten"], ctl.stats()["fallback_reason"]
        torch.testing.assert_close(full, reference, atol=1e-4, rtol=1e-4)
        ctl.set_active(torch.arange(0, n, 3))
        torch.testing.assert_close(f(latent, **kwargs, return_dict=False)[0], full, atol=1e-4, rtol=1e-4)


class LatentsByAnotherName(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, latents, scale):
        return self.proj(latents) * scale


def test_a_graph_without_a_hidden_states_input_names_the_inputs_it_has():
    snap = snapshot(LatentsByAnotherName().eval(), latents=torch.randn(1, 8, 4), scale=torch.ones(1))
    (report,) = snap.reports
    assert not report.rewritten
    assert "no `hidden_states` input" in report.reason and "its inputs: latents, scale" in report.reason


def test_cosmos_which_crashed_the_analysis_is_rewritten_and_exact():
    """Cosmos raised AttributeError inside the analysis (a dtype-only use of the token
    tensor); with the grouped-query head repeat rule it is rewritten and matches eager."""
    assert_rewritten_and_exact(*cosmos())


def test_wan_animate_which_fell_back_is_rewritten_and_exact():
    """WanAnimate fell back (its entry first found on `pose_hidden_states`, then the face
    adapter's split of the tokens into frames); with the per-frame cross-attention rule it is
    rewritten and matches eager."""
    assert_rewritten_and_exact(*wan_animate())


def test_latte_which_fell_back_is_rewritten_and_exact():
    """Latte fell back (frames folded into the batch axis at its entry and exit); with the
    folded-groups rule it is rewritten and matches eager."""
    assert_rewritten_and_exact(*latte())


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _build(name):
    builder, _ = NOT_REWRITTEN[name]
    try:
        model, args, kwargs = builder()
    except Exception as e:  # noqa: BLE001 - a diffusers version without this config
        pytest.skip(f"{name}: the tiny config cannot be built here: {type(e).__name__}: {e}")
    model.eval()
    try:
        with torch.no_grad():
            reference = _first(model(*args, **kwargs))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"{name}: the eager model fails on the tiny inputs: {type(e).__name__}: {e}")
    return model, args, kwargs, reference


@pytest.mark.parametrize("name", sorted(NOT_REWRITTEN))
def test_every_graph_of_an_unrewritten_model_has_a_reason(name):
    model, args, kwargs, _ = _build(name)
    snap = snapshot(model, *args, **kwargs)
    assert snap.reports
    for report in snap.reports:
        assert not report.rewritten
        assert isinstance(report.reason, str) and report.reason.strip(), report
        assert INTERNAL not in report.reason, report.reason
    why = NOT_REWRITTEN[name][1]
    if why is not None:
        assert any(why in r.reason for r in snap.reports), [r.reason for r in snap.reports]


@pytest.mark.parametrize("name", sorted(NOT_REWRITTEN))
def test_unrewritten_model_runs_as_eager_with_a_fallback_reason(name):
    model, args, kwargs, reference = _build(name)
    compiled = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _first(compiled(*args, **kwargs))
    torch.testing.assert_close(out, reference)
    assert not [str(w.message) for w in caught if INTERNAL in str(w.message)]
    stats = jano_compile.controller(compiled).stats()
    assert stats["rewritten"] is False
    reason = stats["fallback_reason"]
    assert isinstance(reason, str) and reason.strip()
    assert INTERNAL not in reason
    split = stats["graphs"] > 1           # QwenImage 2.1 breaks into pieces, the MLP does not
    assert split == (name == "qwenimage21")
    assert ("graph breaks" in reason and "torch._dynamo.explain" in reason) == split
    assert NOT_REWRITTEN[name][1] in reason or name == "qwenimage21"    # its pieces' own reasons follow
    assert "{text}" not in reason


def test_qwenimage21_empty_graph_holds_no_image_tokens():
    model, args, kwargs, _ = _build("qwenimage21")
    snap = snapshot(model, *args, **kwargs)
    empty = [r for r in snap.reports if r.reason == "the graph returns no tensor"]
    assert empty and all(not r.holds_image_tokens for r in empty)


# --------------------------------------------------------------------------- hand-built graphs
def _graph(inputs: dict, build) -> fx.GraphModule:
    """A graph of placeholders named like `inputs` (example value, or None for none recorded);
    `build(graph, nodes)` adds the body and returns what the graph outputs."""
    graph = fx.Graph()
    nodes = {}
    for name, example in inputs.items():
        nodes[name] = graph.placeholder(name)
        if example is not None:
            nodes[name].meta["example_value"] = example
    graph.output(build(graph, nodes))
    return fx.GraphModule(nn.Module(), graph)


@pytest.mark.parametrize("returns", [(), (None,)], ids=["empty", "none"])
def test_output_path_of_a_graph_returning_no_tensor(returns):
    x = torch.randn(1, 4, 8)
    gm = _graph({"hidden_states": x}, lambda graph, nodes: returns)
    with pytest.raises(NoImageTokens, match="the graph returns no tensor"):
        _output_path(gm)
    with pytest.raises(NoImageTokens, match="the graph returns no tensor"):
        token_layout(gm)
    result = rewrite_graph(gm, [x])
    rewritten, report = result.graph, result.report
    assert rewritten is None
    assert report.reason == "the graph returns no tensor" and not report.holds_image_tokens


def test_operand_without_recorded_shape_is_a_reason():
    """hidden_states [1, 4, 8] + table (nothing recorded): the table might be gathered on the
    token axis or broadcast, the analysis cannot tell, so it says what it found."""
    x = torch.randn(1, 4, 8)

    def body(graph, nodes):
        total = graph.call_function(torch.add, (nodes["hidden_states"], nodes["table"]))
        total.meta["example_value"] = x.clone()
        return (total,)

    gm = _graph({"hidden_states": x, "table": None}, body)
    with pytest.raises(Unrewritable, match="operand table has no recorded shape"):
        token_layout(gm)
    result = rewrite_graph(gm, [x, torch.randn(1, 4, 8)])
    rewritten, report = result.graph, result.report
    assert rewritten is None
    assert "operand table has no recorded shape" in report.reason and report.holds_image_tokens


class TimestepDiT(nn.Module):
    """hidden_states [B, C, H, W] -> tokens [B, N, D]; the timestep embedding is cast with
    `emb.type_as(tokens)` (as Cosmos does): the tokens only give the dtype."""

    def __init__(self, channels=4, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(channels, dim, 2, stride=2)
        self.time = nn.Linear(dim, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, 4 * channels)

    def forward(self, hidden_states, timestep):
        x = self.embed(hidden_states).flatten(2).transpose(1, 2)             # [B, N, D]
        freqs = torch.arange(x.shape[-1] // 2, dtype=torch.float32)
        angles = timestep[:, None] * freqs                                    # [B, D/2]
        emb = torch.cat([angles.sin(), angles.cos()], dim=-1).type_as(x)     # [B, D]
        x = x + self.time(emb)[:, None]
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))
        x = x + F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return (self.out(x),)                                                 # [B, N, 4C]


def test_dtype_reference_to_image_tokens_does_not_block_the_rewrite():
    model = TimestepDiT().eval()
    x, t = torch.randn(2, 4, 8, 8), _t(2)
    snap = snapshot(model, x, t)
    (report,) = snap.reports
    assert report.rewritten, report.reason
    torch._dynamo.reset()
    with torch.no_grad():
        reference = model(x, t)[0]
        compiled = torch.compile(model, backend="jano", dynamic=False,
                                 options={"lowering": "eager"})
        out = compiled(x, t)[0]
    torch.testing.assert_close(out, reference)
    assert jano_compile.controller(compiled).stats()["rewritten"] is True


# --------------------------------------------------------------------------- damaged example values
def _captured(name) -> fx.GraphModule:
    if name == "toy":
        return snapshot(ToyDiT().eval(), torch.randn(1, 4, 8, 8)).before[0]
    model, kwargs, _ = FAMILIES[name].build(b=1, layers=1)
    return snapshot(model.eval(), **kwargs, return_dict=False).before[0]


DAMAGE = {
    "missing": lambda example: None,
    "int": lambda example: 3,
    "tuple": lambda example: (example,),
}


def _analyse_damaged(gm: fx.GraphModule, nodes, damage: str):
    """token_layout(gm) with the example values of `nodes` replaced; restored afterwards.
    Returns the plan or the Unrewritable; any other exception propagates."""
    saved = {n: dict(n.meta) for n in nodes}
    try:
        for n in nodes:
            example = n.meta.pop("example_value", None)
            n.meta.pop("val", None)
            new = DAMAGE[damage](example)
            if new is not None:
                n.meta["example_value"] = new
        return token_layout(gm)
    except Unrewritable as e:
        assert e.reason.strip()
        return e
    finally:
        for n, meta in saved.items():
            n.meta.clear()
            n.meta.update(meta)


@pytest.mark.parametrize("name", ["toy", "flux", "cogvideox_rope"])
def test_damaged_example_values_end_as_unrewritable(name):
    """Node by node, each example value taken away or replaced by a non-tensor: the analysis
    returns a plan or raises Unrewritable, and nothing else."""
    gm = _captured(name)
    token_layout(gm)   # the intact graph is rewritable
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    failures = 0
    for node in nodes:
        for damage in DAMAGE:
            failures += isinstance(_analyse_damaged(gm, [node], damage), Unrewritable)
    assert failures > 0
    token_layout(gm)   # and intact again


@pytest.fixture(scope="module")
def toy_graph():
    """ToyDiT's graph, captured once for all hypothesis examples (each restores what it damaged)."""
    torch._dynamo.reset()
    gm = _captured("toy")
    torch._dynamo.reset()
    return gm


@given(st.data())
def test_damage_to_several_nodes_ends_as_unrewritable(toy_graph, data):
    nodes = [n for n in toy_graph.graph.nodes if n.op != "output"]
    picked = data.draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=4, unique=True))
    damage = data.draw(st.sampled_from(sorted(DAMAGE)))
    _analyse_damaged(toy_graph, picked, damage)


def test_flux_in_float16_is_rewritten_through_its_clip():
    """In fp16 diffusers' FLUX blocks clip their outputs (`.clip(-65504, 65504)`): a
    token-wise op like clamp, so the model is rewritten and matches the eager model."""
    ctl, n = check_oracle("flux", 1, torch.float16, [list(range(0, 64, 3)), list(range(64))], h=8, w=8)
    assert ctl.stats()["rewritten"]


@pytest.mark.parametrize("family", ["flux", "sd3", "cogvideox_rope"])
def test_a_literal_the_passes_miss_ends_as_a_fallback(family, monkeypatch):
    """The shape check after the passes is the net under them: with the rewriting of token
    literals turned off (a pass that misses a reshape to [.., T + N, ..]), the graph is not
    rewritten, the reason names the failed shape check, and the model runs as eager."""
    import sys

    monkeypatch.setattr(sys.modules["jano_compile.passes.token_shapes"], "_rewrite_literal",
                        lambda graph, edit: None)
    reason = _fallback_reason_equal_to_eager(family)
    assert "shape check with" in reason, reason


def _fallback_reason_equal_to_eager(family: str) -> str:
    """Compile `family` (tests/models.py) with jano, check the output against the eager model,
    check the graph was not rewritten, and return the reason."""
    from .oracle import build
    torch._dynamo.reset()
    model, kwargs, n = build(family, 1, torch.float32, h=4, w=4)
    compiled = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = model(**kwargs, return_dict=False)[0]
        out = compiled(**kwargs, return_dict=False)[0]
    torch.testing.assert_close(out, reference)
    stats = jano_compile.controller(compiled).stats()
    torch._dynamo.reset()
    assert stats["rewritten"] is False
    return stats["fallback_reason"]


def test_a_plan_edit_without_its_rewrite_ends_as_a_fallback(monkeypatch):
    """token_shapes applies each kind of literal edit through its table; a kind the table
    lacks (a new edit added to the plan but not to the pass) stops the rewrite with that
    reason, before any shape check, and the model runs as eager."""
    import sys

    from jano_compile.passes.plan import ShapeLiteral

    shapes = sys.modules["jano_compile.passes.token_shapes"]
    monkeypatch.setattr(shapes, "_LITERAL_REWRITES",
                        {kind: f for kind, f in shapes._LITERAL_REWRITES.items() if kind is not ShapeLiteral})
    reason = _fallback_reason_equal_to_eager("flux")
    assert "token_shapes has no rewrite for ShapeLiteral" in reason, reason
