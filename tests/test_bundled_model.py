"""The bundled model: procedural data, packing, the loader and a short generation."""

from __future__ import annotations

import socket
import sys

import pytest
import torch

from jano_compile.models import (
    CLASS_NAMES,
    BundledModelSpec,
    bundled,
    bundled_files,
    flow_sigmas,
    image_ids,
    make_batch,
    make_shapes,
    pack,
    unpack,
)

# The package exports the loader function `bundled`, which shadows the submodule of that name.
bundled_module = sys.modules["jano_compile.models.bundled"]
WEIGHTS_PATH, CONFIG_PATH = bundled_files()
needs_weights = pytest.mark.skipif(
    not (WEIGHTS_PATH.is_file() and CONFIG_PATH.is_file()),
    reason=f"bundled weights not trained yet ({WEIGHTS_PATH}); run examples/train_bundled_model.py",
)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the bundled model must load without network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model():
    if not (WEIGHTS_PATH.is_file() and CONFIG_PATH.is_file()):
        pytest.skip(f"bundled weights not trained yet ({WEIGHTS_PATH}); run examples/train_bundled_model.py")
    return bundled()


# Procedural data ---------------------------------------------------------------------------


def test_shapes_are_seeded_in_range_and_per_class():
    class_ids = torch.arange(len(CLASS_NAMES)).repeat(3)
    first = make_shapes(class_ids, torch.Generator().manual_seed(7))
    second = make_shapes(class_ids, torch.Generator().manual_seed(7))
    assert first.shape == (12, 3, 32, 32)
    assert first.dtype == torch.float32
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert first.min() >= -1.0 and first.max() <= 1.0
    other = make_shapes(class_ids, torch.Generator().manual_seed(8))
    assert not torch.equal(first, other)


def test_shapes_have_flat_background_and_sharp_object():
    images, _ = make_batch(16, torch.Generator().manual_seed(0))
    # Neighbouring-pixel differences: most are tiny (smooth background), some are large (edges).
    steps = (images[..., 1:] - images[..., :-1]).abs().amax(dim=1)
    assert (steps < 0.05).float().mean() > 0.6
    assert (steps > 0.3).float().mean() > 0.01


def test_shapes_empty_batch():
    empty = make_shapes(torch.zeros(0, dtype=torch.long), torch.Generator().manual_seed(0))
    assert empty.shape == (0, 3, 32, 32)


# Packing and schedule ----------------------------------------------------------------------


def test_pack_matches_flux_layout_and_round_trips():
    images = torch.randn(2, 3, 32, 32)
    tokens = pack(images)
    assert tokens.shape == (2, 256, 12)
    # Token (row 1, col 2) holds pixels [2:4, 4:6], channels ordered (channel, dy, dx).
    torch.testing.assert_close(tokens[:, 1 * 16 + 2], images[:, :, 2:4, 4:6].reshape(2, 12))
    torch.testing.assert_close(unpack(tokens, (16, 16)), images, rtol=0, atol=0)


def test_image_ids_follow_flux_convention():
    ids = image_ids((16, 16))
    assert ids.shape == (256, 3)
    assert torch.all(ids[:, 0] == 0)
    torch.testing.assert_close(ids[17], torch.tensor([0.0, 1.0, 1.0]))
    torch.testing.assert_close(ids[16 * 3 + 5], torch.tensor([0.0, 3.0, 5.0]))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_sigmas_decrease_from_one_to_zero(shift):
    sigmas = flow_sigmas(10, shift)
    assert sigmas.shape == (11,)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_spec_json_round_trip():
    spec = BundledModelSpec(
        image_size=32, image_channels=3, pixel_patch=2, text_tokens=4, class_names=CLASS_NAMES,
        transformer={"in_channels": 12, "axes_dims_rope": (8, 12, 12)}, training={"steps": 3},
    )
    assert BundledModelSpec.from_json(spec.to_json()) == spec
    assert spec.grid == (16, 16) and spec.token_channels == 12


# Loader ------------------------------------------------------------------------------------


def test_missing_weights_raise_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(
        bundled_module, "bundled_files", lambda: (tmp_path / "bundled.safetensors", tmp_path / "bundled.json")
    )
    with pytest.raises(FileNotFoundError, match="train_bundled_model.py"):
        bundled_module.bundled()


@needs_weights
def test_weights_load_offline(no_network):
    loaded = bundled()
    assert loaded.transformer.training is False
    assert loaded.dtype == torch.float32
    assert loaded.grid == (16, 16)
    assert loaded.num_classes == len(loaded.class_names) >= 2
    assert WEIGHTS_PATH.stat().st_size <= 10 * 2**20


@needs_weights
def test_conditioning_shapes(model):
    inputs = model.conditioning([0, 1, 1])
    config = model.transformer.config
    assert inputs["encoder_hidden_states"].shape == (3, model.spec.text_tokens, config.joint_attention_dim)
    assert inputs["pooled_projections"].shape == (3, config.pooled_projection_dim)
    assert inputs["txt_ids"].shape == (model.spec.text_tokens, 3) and not inputs["txt_ids"].any()
    assert inputs["img_ids"].shape == (256, 3)


@needs_weights
def test_four_step_generation(model):
    images = model.sample([0, 1], num_steps=4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32)
    assert not torch.isnan(images).any()
    again = model.sample([0, 1], num_steps=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(images, again)


@needs_weights
def test_sample_uses_the_given_transformer_and_callback(model):
    calls, steps = [], []

    def transformer(**kwargs):
        calls.append(sorted(kwargs))
        return model.transformer(**kwargs)

    reference = model.sample([2], num_steps=3, generator=torch.Generator().manual_seed(1))
    images = model.sample(
        [2], num_steps=3, generator=torch.Generator().manual_seed(1), transformer=transformer,
        callback=lambda step, timestep, tokens: steps.append((step, float(timestep[0]), tokens.shape)),
    )
    torch.testing.assert_close(images, reference)
    assert len(calls) == 3
    assert calls[0] == sorted(
        ["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids", "return_dict"]
    )
    assert [s[0] for s in steps] == [0, 1, 2]
    assert steps[0][1] == 1.0 and steps[1][1] < 1.0
    assert steps[0][2] == (1, 256, 12)
