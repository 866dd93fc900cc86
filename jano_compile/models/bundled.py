"""The bundled model: a small FLUX transformer trained on procedural shapes, shipped as package data.

It is a diffusers ``FluxTransformer2DModel`` working directly in pixel space (no VAE): an RGB
image of ``image_size x image_size`` is packed into 2x2 patches the way FLUX packs its latents,
so a 32x32x3 image becomes a 16x16 grid = 256 image tokens of 12 channels. Class ids condition
it through a learned table (``ClassConditioning``) that produces FLUX's two text inputs,
``encoder_hidden_states [batch, text_tokens, joint_attention_dim]`` and
``pooled_projections [batch, pooled_projection_dim]``. It was trained with rectified flow
(``x_t = (1 - t) x0 + t noise``, velocity target ``noise - x0``) by
``examples/train_bundled_model.py``.

Both files live next to this module: ``bundled.safetensors`` holds the transformer weights and
the conditioning table (keys prefixed ``cond.``), ``bundled.json`` the configuration. Nothing is
ever downloaded.

Usage::

    from jano_compile.models import bundled

    model = bundled()
    images = model.sample(torch.tensor([0, 1, 2, 3]), num_steps=50,
                          generator=torch.Generator().manual_seed(0))  # [4, 3, 32, 32] in [0, 1]
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "bundled.safetensors"
CONFIG_FILE = "bundled.json"
CONDITIONING_PREFIX = "cond."
TRAIN_SCRIPT = "examples/train_bundled_model.py"


@dataclass(frozen=True)
class BundledModelSpec:
    """Facts about the bundled model, stored in ``bundled.json``.

    Attributes:
        image_size: height and width of the generated RGB images in pixels.
        image_channels: colour channels (3).
        pixel_patch: side of the square pixel patch packed into one token (2, as FLUX packs
            its latents); a token has ``image_channels * pixel_patch**2`` channels.
        text_tokens: how many conditioning tokens stand in for the text prompt.
        class_names: name of each class id.
        transformer: keyword arguments of ``FluxTransformer2DModel``.
        training: free-form record of how the weights were trained (steps, loss, time).
    """

    image_size: int
    image_channels: int
    pixel_patch: int
    text_tokens: int
    class_names: tuple[str, ...]
    transformer: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int]:
        """Image token grid ``(rows, cols)``."""
        side = self.image_size // self.pixel_patch
        return (side, side)

    @property
    def token_channels(self) -> int:
        return self.image_channels * self.pixel_patch**2

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        record = {
            "image_size": self.image_size,
            "image_channels": self.image_channels,
            "pixel_patch": self.pixel_patch,
            "text_tokens": self.text_tokens,
            "class_names": list(self.class_names),
            "transformer": {k: list(v) if isinstance(v, tuple) else v for k, v in self.transformer.items()},
            "training": self.training,
        }
        return json.dumps(record, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "BundledModelSpec":
        record = json.loads(text)
        transformer = dict(record["transformer"])
        if "axes_dims_rope" in transformer:
            transformer["axes_dims_rope"] = tuple(transformer["axes_dims_rope"])
        return cls(
            image_size=int(record["image_size"]),
            image_channels=int(record["image_channels"]),
            pixel_patch=int(record["pixel_patch"]),
            text_tokens=int(record["text_tokens"]),
            class_names=tuple(record["class_names"]),
            transformer=transformer,
            training=dict(record.get("training", {})),
        )


class ClassConditioning(nn.Module):
    """Learned per-class stand-ins for FLUX's text encoders.

    ``forward(class_ids [batch])`` returns ``(encoder_hidden_states [batch, text_tokens,
    joint_attention_dim], pooled_projections [batch, pooled_projection_dim])``.
    """

    def __init__(self, num_classes: int, text_tokens: int, joint_attention_dim: int, pooled_projection_dim: int):
        super().__init__()
        self.text_tokens = text_tokens
        self.joint_attention_dim = joint_attention_dim
        self.text = nn.Embedding(num_classes, text_tokens * joint_attention_dim)
        self.pooled = nn.Embedding(num_classes, pooled_projection_dim)
        nn.init.normal_(self.text.weight, std=1.0)
        nn.init.normal_(self.pooled.weight, std=1.0)

    def forward(self, class_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.text(class_ids).view(-1, self.text_tokens, self.joint_attention_dim)
        return text, self.pooled(class_ids)


def pack(images: torch.Tensor, pixel_patch: int = 2) -> torch.Tensor:
    """Pack images into FLUX tokens: ``[batch, channels, H, W] -> [batch, (H/p)*(W/p), channels*p*p]``.

    Same layout as ``FluxPipeline._pack_latents``: tokens in row-major grid order, each token's
    channels ordered ``(channel, patch_row, patch_col)``.
    """
    batch, channels, height, width = images.shape
    p = pixel_patch
    tokens = images.reshape(batch, channels, height // p, p, width // p, p)
    tokens = tokens.permute(0, 2, 4, 1, 3, 5)
    return tokens.reshape(batch, (height // p) * (width // p), channels * p * p)


def unpack(tokens: torch.Tensor, grid: tuple[int, int], pixel_patch: int = 2) -> torch.Tensor:
    """Inverse of ``pack``: ``[batch, rows*cols, channels*p*p] -> [batch, channels, rows*p, cols*p]``."""
    batch, _, token_channels = tokens.shape
    rows, cols = grid
    p = pixel_patch
    channels = token_channels // (p * p)
    images = tokens.reshape(batch, rows, cols, channels, p, p)
    images = images.permute(0, 3, 1, 4, 2, 5)
    return images.reshape(batch, channels, rows * p, cols * p)


def image_ids(grid: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """FLUX position ids of the image tokens: ``[rows*cols, 3]``, columns ``(0, row, col)``."""
    rows, cols = grid
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows, dtype=torch.float32)[:, None]
    ids[..., 2] = torch.arange(cols, dtype=torch.float32)[None, :]
    return ids.reshape(rows * cols, 3).to(device)


def flow_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """``num_steps + 1`` noise levels from 1 down to 0, optionally shifted as FLUX/SD3 do.

    ``shift > 1`` spends more steps at high noise: ``s' = shift * s / (1 + (shift - 1) * s)``.
    """
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1)
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def build_transformer(spec: BundledModelSpec):
    """A freshly initialised ``FluxTransformer2DModel`` with the spec's configuration."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**spec.transformer)


def build_conditioning(spec: BundledModelSpec) -> ClassConditioning:
    return ClassConditioning(
        num_classes=spec.num_classes,
        text_tokens=spec.text_tokens,
        joint_attention_dim=spec.transformer["joint_attention_dim"],
        pooled_projection_dim=spec.transformer["pooled_projection_dim"],
    )


TransformerCallable = Callable[..., Any]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class BundledModel:
    """The loaded bundled model and everything needed to drive it.

    Attributes:
        transformer: the ``FluxTransformer2DModel`` (eval mode).
        class_conditioning: the learned class table (eval mode).
        spec: configuration and training record.
    """

    transformer: nn.Module
    class_conditioning: ClassConditioning
    spec: BundledModelSpec

    @property
    def grid(self) -> tuple[int, int]:
        """Image token grid ``(rows, cols)``, e.g. ``(16, 16)``."""
        return self.spec.grid

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    @property
    def num_image_tokens(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def pack(self, images: torch.Tensor) -> torch.Tensor:
        """``[batch, 3, H, W] -> [batch, tokens, 12]``."""
        return pack(images, self.spec.pixel_patch)

    def unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, tokens, 12] -> [batch, 3, H, W]``."""
        return unpack(tokens, self.grid, self.spec.pixel_patch)

    @torch.no_grad()
    def conditioning(self, class_ids: torch.Tensor | list[int]) -> dict[str, torch.Tensor]:
        """The transformer's conditioning inputs for a batch of class ids.

        Returns a dict with ``encoder_hidden_states [batch, text_tokens, joint_attention_dim]``,
        ``pooled_projections [batch, pooled_projection_dim]``, ``txt_ids [text_tokens, 3]``
        (zeros) and ``img_ids [tokens, 3]``.
        """
        class_ids = torch.as_tensor(class_ids, dtype=torch.long, device=self.device).reshape(-1)
        text, pooled = self.class_conditioning(class_ids)
        return {
            "encoder_hidden_states": text.to(self.dtype),
            "pooled_projections": pooled.to(self.dtype),
            "txt_ids": torch.zeros(self.spec.text_tokens, 3, device=self.device, dtype=self.dtype),
            "img_ids": image_ids(self.grid, self.device).to(self.dtype),
        }

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Starting tokens ``[batch, tokens, 12]`` drawn on the CPU (same for every device)."""
        noise = torch.randn(
            batch, self.num_image_tokens, self.spec.token_channels, generator=generator, dtype=torch.float32
        )
        return noise.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def sample(
        self,
        class_ids: torch.Tensor | list[int],
        num_steps: int = 50,
        generator: torch.Generator | None = None,
        transformer: TransformerCallable | None = None,
        callback: StepCallback | None = None,
        shift: float = 1.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generate images with a plain Euler loop over the rectified flow, from t=1 to t=0.

        Args:
            class_ids: ``[batch]`` class ids.
            num_steps: denoising steps.
            generator: CPU generator for the initial noise.
            transformer: callable used in place of ``self.transformer`` (e.g. a compiled one);
                called as ``transformer(hidden_states=..., encoder_hidden_states=...,
                pooled_projections=..., timestep=..., img_ids=..., txt_ids=...,
                return_dict=False)[0]``.
            callback: called after each step as ``callback(step_index, timestep, tokens)``.
            shift: timestep shift (1.0 = evenly spaced).
            noise: optional starting tokens ``[batch, tokens, 12]`` instead of drawing them.

        Returns:
            ``[batch, 3, H, W]`` float32 images in ``[0, 1]``.
        """
        model = transformer if transformer is not None else self.transformer
        inputs = self.conditioning(class_ids)
        batch = inputs["encoder_hidden_states"].shape[0]
        tokens = self.initial_noise(batch, generator) if noise is None else noise.to(self.device, self.dtype)
        sigmas = flow_sigmas(num_steps, shift).to(self.device)
        for step in range(num_steps):
            timestep = sigmas[step].expand(batch).to(self.dtype)
            velocity = model(hidden_states=tokens, timestep=timestep, return_dict=False, **inputs)[0]
            tokens = tokens + (sigmas[step + 1] - sigmas[step]).to(self.dtype) * velocity
            if callback is not None:
                callback(step, timestep, tokens)
        images = self.unpack(tokens.float())
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Transformer weights plus the conditioning table under ``cond.``, as saved on disk."""
        weights = {k: v.detach().contiguous() for k, v in self.transformer.state_dict().items()}
        for k, v in self.class_conditioning.state_dict().items():
            weights[CONDITIONING_PREFIX + k] = v.detach().contiguous()
        return weights

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``bundled.safetensors`` (float32) and ``bundled.json`` into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights_path = directory / WEIGHTS_FILE
        config_path = directory / CONFIG_FILE
        weights = {k: v.float().cpu() for k, v in self.state_dict().items()}
        # Write then rename so an interrupted save never leaves a truncated file behind.
        tmp_weights = weights_path.with_suffix(".safetensors.tmp")
        save_file(weights, str(tmp_weights), metadata={"format": "pt"})
        tmp_weights.chmod(0o644)
        tmp_weights.replace(weights_path)
        config_path.write_text(self.spec.to_json())
        return weights_path, config_path


def new_bundled_model(spec: BundledModelSpec, seed: int = 0) -> BundledModel:
    """A randomly initialised model with ``spec`` (what training starts from)."""
    torch.manual_seed(seed)
    return BundledModel(build_transformer(spec), build_conditioning(spec), spec)


def load_bundled(
    weights_path: str | Path,
    config_path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> BundledModel:
    """Load a bundled model from explicit file paths (eval mode)."""
    from safetensors.torch import load_file

    spec = BundledModelSpec.from_json(Path(config_path).read_text())
    weights = load_file(str(weights_path))
    model = BundledModel(build_transformer(spec), build_conditioning(spec), spec)
    conditioning_weights = {
        k[len(CONDITIONING_PREFIX):]: v for k, v in weights.items() if k.startswith(CONDITIONING_PREFIX)
    }
    transformer_weights = {k: v for k, v in weights.items() if not k.startswith(CONDITIONING_PREFIX)}
    model.transformer.load_state_dict(transformer_weights, strict=True)
    model.class_conditioning.load_state_dict(conditioning_weights, strict=True)
    model.transformer.to(device=device)
    if dtype != torch.float32:  # diffusers warns on any dtype cast, so only cast when asked
        model.transformer.to(dtype=dtype)
    model.transformer.eval().requires_grad_(False)
    model.class_conditioning.to(device=device).eval().requires_grad_(False)
    return model


def bundled_files() -> tuple[Path, Path]:
    """Paths of the packaged ``bundled.safetensors`` and ``bundled.json`` (they may not exist)."""
    package = resources.files("jano_compile.models")
    return Path(str(package / WEIGHTS_FILE)), Path(str(package / CONFIG_FILE))


def bundled(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> BundledModel:
    """Load the model shipped with the package (no network access).

    Raises:
        FileNotFoundError: if the weights were never trained into the package.
    """
    weights_path, config_path = bundled_files()
    missing = [p for p in (weights_path, config_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"bundled model file(s) not found: {', '.join(str(p) for p in missing)}. "
            f"Train them with `python {TRAIN_SCRIPT}` (about an hour on one CPU thread)."
        )
    logger.debug("loading bundled model from %s", weights_path)
    return load_bundled(weights_path, config_path, device=device, dtype=dtype)
