"""Token geometry derived from the config and the inputs (issue 11, part 3).

For the classes jano rewrites exactly (tiny instances of `benchmarks/coverage_models.py`):
the derived grid is the grid the inputs were built on and holds as many tokens as the
graph's image-token region, and the derived token order is the model's own: changing the
input patch that `image_tokens` calls token k changes token k, and only it, in the model's
patch embedding output. A representative subset runs by default; all classes with
JANO_GEOMETRY_ALL=1, or as a script that prints one line per class:

    python tests/test_geometry.py
"""
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.fx as fx
from hypothesis import given
from hypothesis import strategies as st

import jano_compile
from jano_compile.clock import SchedulerClock
from jano_compile.geometry import (GeometryError, SequenceSlots, TokenGeometry, geometry_for, grid_from_graph,
                                   grid_from_ids, image_tokens, latent_rows_from_graph)
from jano_compile.passes.input_roles import input_roles
from jano_compile.rewrite import rewrite_graph

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from coverage_models import FRAMES, GRID_H, GRID_W, TEXT, TINY  # noqa: E402

#: The classes jano rewrites exactly (docs/coverage.md, diffusers 0.42.1).
REWRITTEN = [
    "AllegroTransformer3DModel", "AuraFlowTransformer2DModel", "BriaFiboTransformer2DModel",
    "BriaTransformer2DModel", "ChromaTransformer2DModel", "ChronoEditTransformer3DModel",
    "CogVideoXTransformer3DModel", "CogView3PlusTransformer2DModel", "CogView4Transformer2DModel",
    "ConsisIDTransformer3DModel", "DiTTransformer2DModel", "EasyAnimateTransformer3DModel",
    "Flux2Transformer2DModel", "Flux3Transformer2DModel", "FluxTransformer2DModel", "HeliosTransformer3DModel",
    "HunyuanDiT2DModel", "HunyuanImageTransformer2DModel", "HunyuanVideoTransformer3DModel",
    "Ideogram4Transformer2DModel", "JoyImageEditTransformer3DModel", "LTXVideoTransformer3DModel",
    "LongCatImageTransformer2DModel", "MotifVideoTransformer3DModel", "OvisImageTransformer2DModel",
    "PRXTransformer2DModel", "PixArtTransformer2DModel", "SD3Transformer2DModel",
    "SkyReelsV2Transformer3DModel", "WanTransformer3DModel", "WanVACETransformer3DModel",
    # rewritten since the token rules of 769cdf2 (complex RoPE, repeat_interleave off the token axis)
    "AnyFlowTransformer3DModel", "CosmosTransformer3DModel", "Krea2Transformer2DModel", "LuminaNextDiT2DModel",
    "NucleusMoEImageTransformer2DModel", "QwenImageTransformer2DModel",
    # rewritten since attention to image keys (LTX-2) and the exit before the fold into the grid (Kandinsky)
    "LTX2VideoTransformer3DModel", "Kandinsky5Transformer3DModel", "Kandinsky6Transformer3DModel",
]
#: The grid the tiny inputs are built on (coverage_models: GRID_H x GRID_W, FRAMES latent frames).
VIDEO = {"AllegroTransformer3DModel", "ChronoEditTransformer3DModel", "CogVideoXTransformer3DModel",
         "ConsisIDTransformer3DModel", "EasyAnimateTransformer3DModel", "HeliosTransformer3DModel",
         "HunyuanVideoTransformer3DModel", "LTXVideoTransformer3DModel", "MotifVideoTransformer3DModel",
         "SkyReelsV2Transformer3DModel", "WanTransformer3DModel", "WanVACETransformer3DModel",
         "AnyFlowTransformer3DModel", "CosmosTransformer3DModel", "LTX2VideoTransformer3DModel",
         "Kandinsky5Transformer3DModel", "Kandinsky6Transformer3DModel"}
TRUE_GRID = {cls: (FRAMES if cls in VIDEO else 1, GRID_H, GRID_W) for cls in REWRITTEN}
TRUE_GRID["DiTTransformer2DModel"] = (1, GRID_H, GRID_H)      # DiT's square position table
#: One of each input layout: packed + ids (2 kinds), image, video [B, C, F, H, W] with
#: frames patched by the config, video [B, F, C, H, W], video [B, F, H, W, C] with no
#: channels in the config, packed tokens with the grid from the graph (meshgrid, flattened
#: table), packed tokens with text slots (Ideogram 4: the latent's rows from the graph's
#: mask), and classes that had no table entry.
SUBSET = ["FluxTransformer2DModel", "Flux2Transformer2DModel", "AuraFlowTransformer2DModel",
          "HunyuanDiT2DModel", "WanTransformer3DModel", "CogVideoXTransformer3DModel",
          "Kandinsky5Transformer3DModel", "LTXVideoTransformer3DModel", "QwenImageTransformer2DModel",
          "HunyuanVideoTransformer3DModel", "Ideogram4Transformer2DModel"]
CLASSES = REWRITTEN if os.environ.get("JANO_GEOMETRY_ALL") else SUBSET


# --------------------------------------------------------------------------- helpers
def capture(model, kwargs):
    """(dynamo's first graph, its example inputs, jano's report on it) of `model(**kwargs)`.
    The rewrite runs inside the backend, as `jano_compile.explain` runs it."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append((gm, list(example_inputs), rewrite_graph(gm, example_inputs).report))
        return gm.forward

    with torch.no_grad():
        model(**kwargs)      # fills the tables some models build lazily
        torch.compile(model, backend=backend, dynamic=False)(**kwargs)
    return graphs[0]


def node_values(gm: fx.GraphModule, inputs) -> dict:
    """The value of every node of `gm` run on `inputs`."""
    seen = {}

    class Record(fx.Interpreter):
        def run_node(self, node):
            seen[node.name] = out = super().run_node(node)
            return out
    with torch.no_grad():
        Record(gm).run(*inputs)
    return seen


class Derived:
    """One class: its graph, jano's image-token count and entry, and the derived tokens."""

    def __init__(self, cls: str, batch: int = 1):
        torch._dynamo.reset()
        torch.manual_seed(0)
        self.model, kwargs = TINY[cls].build(batch)
        self.gm, self.inputs, self.report = capture(self.model, kwargs)
        roles = input_roles(self.gm)
        self.hs_position = roles.hidden_states
        self.ids = self.inputs[roles.position_ids] if roles.position_ids is not None else None
        self.geometry = geometry_for(self.model)
        self.grid_hint = grid_from_graph(self.gm, self.report.num_image_tokens)
        latent_rows = latent_rows_from_graph(self.gm)
        #: the rows of the graph's sequence that are the grid's tokens (all but Ideogram 4's text slots)
        self.rows = latent_rows(self.inputs) if latent_rows is not None else torch.arange(self.report.num_image_tokens)

    def tokens(self, hidden_states):
        return image_tokens(self.geometry, hidden_states, self.ids, self.grid_hint,
                            self.report.num_image_tokens, self.rows)

    def token_positions(self) -> torch.Tensor:
        hs = self.inputs[self.hs_position]
        return self.tokens(torch.arange(hs.numel()).reshape(hs.shape))[0]

    def changed_tokens(self, token: int, where: torch.Tensor = None) -> list[int]:
        """Which tokens (batch 0) change when the input values of token `token` do (`where`:
        [B, N, C'] positions in hidden_states, default the derived ones), read at the first
        [B, N, D] value of the graph that changes: the patch embedding's output (the graph's
        entry can lie after an attention, Helios, or be a position table, Cosmos), or the
        entry where an earlier value's token axis is ambiguous. Packed tokens are their own
        first such value, so for them this holds by construction; their grid is checked
        against the true grid instead."""
        hs = self.inputs[self.hs_position]
        if where is None:   # [B, N, C']: the positions in hidden_states of each token's values
            where = self.token_positions()
        moved = hs.clone()
        moved.view(-1)[where[0, token]] += 1.0 + torch.rand(where.shape[-1])
        inputs = list(self.inputs)
        inputs[self.hs_position] = moved
        before, after = node_values(self.gm, self.inputs), node_values(self.gm, inputs)
        n, b = self.report.num_image_tokens, hs.shape[0]
        for node in self.gm.graph.nodes:
            x, y = before.get(node.name), after.get(node.name)
            if not isinstance(x, torch.Tensor) or x.dim() != 3 or tuple(x.shape[:2]) != (b, n) \
                    or not x.is_floating_point():
                continue
            if node.name != self.report.entry and n in x.shape[2:]:
                continue        # [B, D, N] with D == N (DiT): which axis is the token axis?
            change = (y - x).abs()[0].reshape(n, -1).amax(dim=-1)
            if (change > 1e-6).any():
                return torch.nonzero(change > 1e-6).flatten().tolist()
        return []


def probe_tokens(grid) -> list[int]:
    """First token, next column, next row, next frame, last token."""
    f, h, w = grid
    return sorted({0, min(1, f * h * w - 1), min(w, f * h * w - 1), min(h * w, f * h * w - 1), f * h * w - 1})


# --------------------------------------------------------------------------- every rewritten class
@pytest.mark.parametrize("cls", CLASSES)
def test_derived_grid_holds_the_graphs_image_tokens_in_the_models_order(cls):
    d = Derived(cls)
    assert d.report.rewritten, d.report.reason
    tokens, grid = d.tokens(d.inputs[d.hs_position])
    assert tokens.shape[:2] == (1, d.rows.numel()) and grid == TRUE_GRID[cls]
    for k in probe_tokens(grid):
        assert d.changed_tokens(k) == [int(d.rows[k])], f"token {k} of grid {grid}"


def test_the_order_check_catches_a_column_major_order():
    """The near miss: the right grid read column-major moves another token."""
    d = Derived("WanTransformer3DModel")
    f, h, w = TRUE_GRID["WanTransformer3DModel"]
    where = d.token_positions()
    column_major = where.view(1, f, h, w, -1).transpose(2, 3).reshape(where.shape)
    assert d.changed_tokens(1, column_major) == [w]      # row 1, column 0
    assert d.changed_tokens(1, where) == [1]


def test_family_is_the_defining_diffusers_class_so_subclasses_keep_their_preset():
    import diffusers as D

    class MyFlux(D.FluxTransformer2DModel):
        pass

    class MyWan(D.WanTransformer3DModel):
        pass

    assert geometry_for(MyFlux(num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
                               joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(2, 2, 4),
                               in_channels=4)).family == "flux"
    wan = geometry_for(MyWan(num_layers=1, num_attention_heads=2, attention_head_dim=12, in_channels=4,
                             out_channels=4, text_dim=16, freq_dim=16, ffn_dim=16))
    assert wan == TokenGeometry("wan", (1, 2, 2), 4, None)
    families = {cls: geometry_for(TINY[cls].build(1)[0]).family for cls in
                ("SD3Transformer2DModel", "HunyuanDiT2DModel", "CogVideoXTransformer3DModel")}
    assert families == {"SD3Transformer2DModel": "sd3", "HunyuanDiT2DModel": "hunyuandit",
                        "CogVideoXTransformer3DModel": "cogvideox"}
    assert geometry_for(None) is None


# --------------------------------------------------------------------------- the derivation's rules
IMAGE = TokenGeometry("x", (1, 2, 2), 4)


def test_ids_give_the_grid_with_any_offset_and_only_in_sequence_order():
    f, r, c = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(4), indexing="ij")
    ids = torch.stack([f, r, c], -1).reshape(-1, 3).float()
    assert grid_from_ids(ids, 24) == (2, 3, 4)
    assert grid_from_ids((ids + 100).unsqueeze(0).expand(2, -1, -1), 24) == (2, 3, 4)
    with pytest.raises(GeometryError, match="sequence order"):       # column-major: a near miss
        grid_from_ids(ids[:, [0, 2, 1]], 24)
    with pytest.raises(GeometryError, match="not 24 tokens"):          # a reference image of another size
        grid_from_ids(torch.cat([ids[:12], ids[:12] + torch.tensor([1.0, 0, 4])]), 24)
    with pytest.raises(GeometryError, match="sequence order"):
        grid_from_ids(ids[torch.randperm(24)], 24)
    text = torch.zeros(7, 3)                                          # joint ids: text rows, then the image
    assert grid_from_ids(torch.cat([text, ids]), 24) == (2, 3, 4)
    assert grid_from_ids(torch.cat([ids, text]), 24) == (2, 3, 4)
    with pytest.raises(GeometryError, match="30 position ids for 24 tokens"):
        grid_from_ids(torch.cat([ids[:3], ids, ids[-3:]]), 24)


def test_channels_last_video_is_found_by_its_config_channels_or_the_graphs_tokens():
    video = torch.randn(1, 4, 3, 6, 8)                                  # [B, C, F, H, W]
    expected = image_tokens(IMAGE, video)
    last = video.permute(0, 2, 3, 4, 1)                                 # [B, F, H, W, C] (Kandinsky 5)
    for geometry, n in ((IMAGE, None), (TokenGeometry("x", (1, 2, 2), None), 36)):
        tokens, grid = image_tokens(geometry, last, num_tokens=n)
        assert grid == expected[1] == (3, 3, 4)
        torch.testing.assert_close(tokens, expected[0])


def test_image_and_video_layouts_patchify_frames_first_row_major():
    image = torch.arange(4 * 4 * 6).reshape(1, 4, 4, 6)
    tokens, grid = image_tokens(IMAGE, image)
    assert grid == (1, 2, 3) and tokens.shape == (1, 6, 16)
    assert tokens[0, 1, 0] == image[0, 0, 0, 2] and tokens[0, 3, 0] == image[0, 0, 2, 0]
    video = torch.randn(1, 4, 3, 4, 6)
    cf, grid_cf = image_tokens(IMAGE, video)
    fc, grid_fc = image_tokens(IMAGE, video.transpose(1, 2))
    assert grid_cf == grid_fc == (3, 2, 3)
    torch.testing.assert_close(cf, fc)


@given(st.sampled_from(["image", "video_cf", "video_fc", "video_fhwc"]), st.integers(1, 2), st.integers(1, 3),
       st.integers(1, 4), st.integers(1, 4), st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
       st.integers(1, 3))
def test_patchify_inverts_the_models_unpatchify(layout, b, frames, h, w, patch, c):
    """Tokens -> the latent the way Wan's forward unpatchifies its output -> image_tokens:
    the same tokens (channels ordered (C, pt, ph, pw) instead of (pt, ph, pw, C)) and grid."""
    pt, ph, pw = (1, *patch[1:]) if layout == "image" else patch
    frames = 1 if layout == "image" else frames
    tokens = torch.randn(b, frames * h * w, pt * ph * pw * c)
    latent = (tokens.reshape(b, frames, h, w, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
              .flatten(6, 7).flatten(4, 5).flatten(2, 3))                  # [B, C, F, H, W]
    if layout == "image":
        latent = latent.squeeze(2)
    elif layout == "video_fc":
        latent = latent.transpose(1, 2)
    elif layout == "video_fhwc":
        latent = latent.permute(0, 2, 3, 4, 1)
    got, grid = image_tokens(TokenGeometry("x", (pt, ph, pw), c, layout), latent)
    assert grid == (frames, h, w)
    expected = tokens.view(b, frames * h * w, pt, ph, pw, c).permute(0, 1, 5, 2, 3, 4).reshape(tokens.shape)
    torch.testing.assert_close(got, expected)


def test_frames_equal_to_channels_take_the_tables_layout_else_diffusers_convention():
    """[B, 4, 4, H, W] with 4 channels: channels first (Wan, HunyuanVideo: 16 channels at 16
    latent frames), unless the table says frames first (CogVideoX): each layout's own tokens."""
    tokens = torch.randn(1, 4 * 2 * 3, 4 * 4)                            # F=4, h=2, w=3; (C=4, 2 x 2 patch)
    by_frame = tokens.view(1, 4, 2, 3, 4, 2, 2).permute(0, 1, 4, 2, 5, 3, 6).reshape(1, 4, 4, 4, 6)  # [B, F, C, H, W]
    frames_first = TokenGeometry("x", (1, 2, 2), 4, "video_fc")          # what the table says for CogVideoX
    got, grid = image_tokens(frames_first, by_frame, num_tokens=24)
    assert grid == (4, 2, 3)
    torch.testing.assert_close(got, tokens)
    for num_tokens in (24, None):                                        # both layouts hold 24 tokens
        got, grid = image_tokens(IMAGE, by_frame.transpose(1, 2), num_tokens=num_tokens)   # [B, C, F, H, W]
        assert grid == (4, 2, 3)
        torch.testing.assert_close(got, tokens)


def test_what_cannot_be_derived_raises_instead_of_guessing_a_grid():
    with pytest.raises(GeometryError, match="channel axis"):              # no axis holds the 4 channels
        image_tokens(IMAGE, torch.randn(1, 2, 8, 12, 3))
    unnamed = TokenGeometry("x", (1, 2, 2), None)                        # Kandinsky: no in_channels
    with pytest.raises(GeometryError, match="no in_channels"):
        image_tokens(unnamed, torch.randn(1, 2, 8, 12, 4))
    with pytest.raises(GeometryError, match="0 of these layouts"):
        image_tokens(unnamed, torch.randn(1, 2, 8, 12, 4), num_tokens=50)
    with pytest.raises(GeometryError, match="3 of these layouts"):       # [B, 4, 4, 4, 4]: every grid holds 16
        image_tokens(unnamed, torch.randn(1, 4, 4, 4, 4), num_tokens=16)
    with pytest.raises(GeometryError, match="without position ids"):      # 64 tokens: never a guessed 8 x 8
        image_tokens(IMAGE, torch.randn(1, 64, 4))
    with pytest.raises(GeometryError, match="channels"):
        image_tokens(IMAGE, torch.randn(1, 8, 8, 4))
    with pytest.raises(GeometryError, match="patch_size"):
        image_tokens(TokenGeometry("x", None, 4), torch.randn(1, 4, 8, 8))


def test_grid_from_graph_reads_position_tables_built_from_sizes_only():
    def meshgrid(x):                                   # LTX-Video
        f, h, w = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(4), indexing="ij")
        return x + torch.stack([f, h, w], -1).reshape(1, 24, 3)

    def table(x, freqs):                               # Qwen-Image: [1, f, h, w, D] -> [f*h*w, D]
        return x * freqs[:2].view(1, 2, 1, 1, 3).expand(1, 2, 3, 4, 3).reshape(24, 3)

    def from_input(x):                                 # the near miss: the latent itself, reshaped
        return x.reshape(2, 3, 4, 3).reshape(24, 3) + 1

    latent = torch.randn(1, 24, 3)
    assert grid_from_graph(capture(meshgrid, {"x": latent})[0], 24) == (2, 3, 4)
    assert grid_from_graph(capture(meshgrid, {"x": latent})[0], 12) is None
    assert grid_from_graph(capture(table, {"x": latent[0], "freqs": torch.randn(8, 3)})[0], 24) == (2, 3, 4)
    assert grid_from_graph(capture(from_input, {"x": latent[0]})[0], 24) is None


# --------------------------------------------------------------------------- end to end
SCHEDULE = dict(lowering="eager", recipe="paper", warmup_steps=3, cooldown_steps=1, static_interval=4,
                medium_interval=2, num_inference_steps=10)


def run_schedule(cls: str, change_inputs=None) -> dict:
    """Ten calls with decreasing timesteps under the automatic schedule; the stats.
    `change_inputs`: what becomes of the tiny model's inputs first."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, kwargs = TINY[cls].build(1)
    kwargs = change_inputs(kwargs) if change_inputs is not None else kwargs
    compiled = torch.compile(model, backend="jano", dynamic=False, options=SCHEDULE)
    ctl = jano_compile.controller(compiled)
    t = next(k for k in ("timestep", "timesteps", "t") if k in kwargs)
    start = kwargs[t]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(10):
            compiled(**{**kwargs, t: start * (1 - step / 10)})
    return ctl.stats()


@pytest.mark.parametrize("cls", ["AuraFlowTransformer2DModel",     # had no table entry
                                 "LTXVideoTransformer3DModel",     # the grid from the graph
                                 "Kandinsky5Transformer3DModel"])  # channels last, none in the config
def test_automatic_schedule_runs_partial_steps(cls):
    stats = run_schedule(cls)
    assert stats["auto_disabled"] is None
    assert {"active", "medium"} <= set(stats["levels"])


def test_a_grid_that_cannot_be_derived_turns_the_schedule_off_not_the_model():
    """The near miss: Ideogram 4 with its image position ids shuffled (the model runs on any
    ids): the latent's rows are found, but they form no grid in sequence order."""
    def shuffled(kwargs):
        ids = kwargs["position_ids"].clone()
        ids[:, TEXT:] = ids[:, TEXT:][:, torch.randperm(GRID_H * GRID_W, generator=torch.Generator().manual_seed(0))]
        return {**kwargs, "position_ids": ids}
    stats = run_schedule("Ideogram4Transformer2DModel", shuffled)
    assert "GeometryError" in stats["auto_disabled"] and "sequence order" in stats["auto_disabled"]
    assert stats["calls"] == 10 and stats["full_calls"] == 10


# --------------------------------------------------------------------------- slots besides the grid (Ideogram 4)
def ideogram4_layout(text_lengths, max_text=TEXT, seed=0):
    """A tiny Ideogram 4 and its inputs in the pipeline's packed layout [padding | text | image]
    (`Ideogram4Pipeline._prepare_ids`), one sample per text length; text slots of the latent zero."""
    from diffusers.pipelines.ideogram4.pipeline_ideogram4 import Ideogram4Pipeline
    torch.manual_seed(seed)
    model, kwargs = TINY["Ideogram4Transformer2DModel"].build(len(text_lengths))
    ids, segments, indicator = Ideogram4Pipeline._prepare_ids(list(text_lengths), GRID_H, GRID_W, max_text, "cpu")
    hidden = torch.zeros(len(text_lengths), max_text + GRID_H * GRID_W, kwargs["hidden_states"].shape[-1])
    hidden[:, max_text:] = torch.randn(len(text_lengths), GRID_H * GRID_W, hidden.shape[-1])
    text = torch.randn(len(text_lengths), hidden.shape[1], kwargs["encoder_hidden_states"].shape[-1])
    return model, dict(kwargs, hidden_states=hidden, encoder_hidden_states=text, position_ids=ids,
                       segment_ids=segments, indicator=indicator)


def test_ideogram4_grid_is_the_latent_rows_of_the_pipelines_packed_layout():
    """Two prompts of other text lengths (left padding differs per sample): the image is the
    last 4 x 6 rows of each, the same rows for a resolution and a maximum text length."""
    model, kwargs = ideogram4_layout([3, TEXT])
    gm, inputs, report = capture(model, kwargs)
    assert report.rewritten and report.num_image_tokens == TEXT + GRID_H * GRID_W     # all rows rewritten
    latent_rows = latent_rows_from_graph(gm)
    assert latent_rows.names == ("indicator",)
    rows = latent_rows(inputs)
    torch.testing.assert_close(rows, torch.arange(TEXT, TEXT + GRID_H * GRID_W))
    torch.testing.assert_close(latent_rows.of_arguments(kwargs), rows)
    tokens, grid = image_tokens(geometry_for(model), kwargs["hidden_states"], kwargs["position_ids"],
                                None, report.num_image_tokens, rows)
    assert grid == (1, GRID_H, GRID_W)
    torch.testing.assert_close(tokens, kwargs["hidden_states"][:, TEXT:])


def test_latent_rows_need_the_latents_only_use_to_be_a_per_token_mask():
    """Near misses: the latent also read unmasked, a mask over channels, a mask from the latent."""
    x, role = torch.randn(1, 5, 4), torch.tensor([[3, 3, 2, 2, 2]])

    def masked(hidden_states, indicator):
        return hidden_states * (indicator == 2).float().unsqueeze(-1)

    def also_unmasked(hidden_states, indicator):
        return masked(hidden_states, indicator) + hidden_states

    def channels(hidden_states, indicator):
        return hidden_states * (indicator[:, :4] == 2).float().unsqueeze(1)

    def from_latent(hidden_states, indicator):
        return hidden_states * (hidden_states[..., :1] > 0).float()

    kwargs = {"hidden_states": x, "indicator": role}
    gm, inputs, _ = capture(masked, kwargs)
    latent_rows = latent_rows_from_graph(gm)
    torch.testing.assert_close(latent_rows(inputs), torch.tensor([2, 3, 4]))
    for near_miss in (also_unmasked, channels, from_latent):
        assert latent_rows_from_graph(capture(near_miss, kwargs)[0]) is None, near_miss.__name__
    with pytest.raises(GeometryError, match="other rows in each sample"):
        latent_rows.of_arguments({"indicator": torch.tensor([[3, 2, 2, 2, 2], [3, 3, 2, 2, 2]])})
    with pytest.raises(GeometryError, match="keeps no row"):
        latent_rows.of_arguments({"indicator": torch.zeros(1, 5, dtype=torch.long)})


def test_sequence_slots_compute_every_slot_with_any_grid_token():
    slots = SequenceSlots(torch.tensor([2, 3, 4, 5]), 7)         # rows 0, 1, 6: slots
    assert slots.sequence_index(torch.tensor([1, 3])).tolist() == [0, 1, 3, 5, 6]
    assert slots.sequence_index(torch.arange(4)).tolist() == list(range(7))
    assert slots.sequence_index(torch.empty(0, dtype=torch.long)).numel() == 0     # a skipped step
    assert slots.on_grid(torch.arange(7.0)).tolist() == [2.0, 3.0, 4.0, 5.0]


def ideogram4_euler_loop(transformer, kwargs, steps, clock=None):
    """The pipeline's loop on the image rows (after the text slots): the model's time runs
    from 0 (noise) to 1 (clean), as Ideogram 4's does; `clock` is driven as `enable(pipe)`
    drives it from the scheduler."""
    x, slots = kwargs["hidden_states"][:, TEXT:].clone(), kwargs["hidden_states"][:, :TEXT]
    times = torch.linspace(0.0, 1.0, steps + 1)
    if clock is not None:
        clock.start_generation()
    for i in range(steps):
        t = torch.full((x.shape[0],), float(times[i]))
        v = transformer(**{**kwargs, "hidden_states": torch.cat([slots, x], 1), "timestep": t,
                           "return_dict": False})[0][:, TEXT:]
        x = x + (times[i + 1] - times[i]) * v
        if clock is not None:
            clock.end_step()
    return x


def test_automatic_schedule_runs_partial_steps_on_ideogram4():
    """End to end (random weights: no quality claim): the schedule runs on the 4 x 6 grid,
    each partial step computes the text slots too, and the run stays near the eager model's."""
    model, kwargs = ideogram4_layout([5, TEXT])
    model.eval()
    options = dict(warmup_steps=3, cooldown_steps=1, static_interval=4, medium_interval=2, active_interval=1,
                   num_inference_steps=12, lowering="eager")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = ideogram4_euler_loop(model, kwargs, 12)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="jano", dynamic=False, options=options)
        ctl = jano_compile.controller(compiled)
        ctl.auto_policy.scheduler_clock = SchedulerClock()
        out = ideogram4_euler_loop(compiled, kwargs, 12, ctl.auto_policy.scheduler_clock)
    stats = ctl.stats()
    assert stats["auto_disabled"] is None
    assert {"active", "medium"} <= set(stats["levels"]) and stats["compute_saved"] > 0
    assert ctl.region_map().shape == (1, GRID_H, GRID_W)
    partial = [c for c in ctl.step_records if not c.full and c.active]
    assert partial and all(TEXT < c.active < c.total for c in partial)
    scale = float(plain.abs().mean())
    assert float((out - plain).abs().mean()) < 0.05 * scale


if __name__ == "__main__":      # the full check: one line per rewritten class
    for name in REWRITTEN:
        try:
            d = Derived(name)
            tokens, grid = d.tokens(d.inputs[d.hs_position])
            n = d.report.num_image_tokens
            order = all(d.changed_tokens(k) == [int(d.rows[k])] for k in probe_tokens(grid))
            print(f"{name:42s} N={n:3d} grid={grid} tokens={tokens.shape[1]:3d} "
                  f"count {'ok' if tokens.shape[1] == d.rows.numel() else 'WRONG'} order {'ok' if order else 'WRONG'} "
                  f"grid {'ok' if grid == TRUE_GRID[name] else 'WRONG'} "
                  f"family={d.geometry.family}", flush=True)
        except GeometryError as e:
            print(f"{name:42s} no grid: {e}", flush=True)
