"""Train the bundled model: a small pixel-space FLUX transformer on procedural shapes.

Rectified flow as in FLUX: ``x_t = (1 - t) x0 + t noise``, the transformer predicts the
velocity ``noise - x0`` at ``t`` drawn logit-normal, loss is the mean squared error. Data are
drawn on the fly (``jano_compile.models.shapes``), so there is no dataset to download. Weights
(an exponential moving average of them) go to ``jano_compile/models/bundled.safetensors``
and the configuration to ``bundled.json``, periodically and at the end; then a grid of samples
is rendered.

Seeded and single-threaded by default so that a run is reproducible on any CPU (with the
package installed, ``pip install -e .``); ``--minutes`` only stops a slow machine early::

    python examples/train_bundled_model.py --minutes 60
    python examples/train_bundled_model.py --steps 50 --out /tmp/bundled --grid /tmp/grid.png
    python examples/train_bundled_model.py --init-from jano_compile/models --steps 4000 --minutes 150
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from jano_compile.models.bundled import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    BundledModel,
    BundledModelSpec,
    load_bundled,
    new_bundled_model,
)
from jano_compile.models.shapes import CLASS_NAMES, ShapeDataConfig, make_batch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "jano_compile" / "models"
DEFAULT_GRID = REPO_ROOT / "docs" / "bundled_samples.png"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps (sets the lr schedule)")
    parser.add_argument("--minutes", type=float, default=65.0, help="stop early after this wall time")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=8e-4, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    parser.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine decay floor, fraction of --lr")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--ema", type=float, default=0.998, help="EMA decay of the saved weights (0 = off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--save-every", type=int, default=200, help="checkpoint interval in steps")
    parser.add_argument(
        "--init-from", type=Path, default=None,
        help="directory with bundled.{safetensors,json} to continue training from (its config wins)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for bundled.{safetensors,json}")
    parser.add_argument("--grid", type=str, default=str(DEFAULT_GRID), help="sample grid PNG ('' to skip)")
    parser.add_argument("--grid-steps", type=int, default=50, help="sampling steps for the grid")
    parser.add_argument("--grid-seeds", type=int, default=6, help="samples per class in the grid")
    parser.add_argument(
        "--position-range", type=float, default=0.25,
        help="object centre wander, 0 = centred, 1 = anywhere it fits; near-centred objects let the "
        "class decide the silhouette early, which the model learns several times faster",
    )
    # Model size.
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=2, help="double-stream FLUX blocks")
    parser.add_argument("--num-single-layers", type=int, default=2, help="single-stream FLUX blocks")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--text-tokens", type=int, default=4)
    parser.add_argument("--cond-dim", type=int, default=64, help="joint_attention_dim and pooled_projection_dim")
    return parser.parse_args()


def model_spec(args: argparse.Namespace) -> BundledModelSpec:
    head_dim = args.head_dim
    position_dims = head_dim // 4  # FLUX: (16, 56, 56) of 128; rope axes must sum to head_dim
    row_dims = (head_dim - position_dims) // 2
    axes_dims_rope = (head_dim - 2 * row_dims, row_dims, row_dims)
    pixel_patch = 2
    return BundledModelSpec(
        image_size=args.image_size,
        image_channels=3,
        pixel_patch=pixel_patch,
        text_tokens=args.text_tokens,
        class_names=CLASS_NAMES,
        transformer=dict(
            patch_size=1,
            in_channels=3 * pixel_patch**2,
            out_channels=3 * pixel_patch**2,
            num_layers=args.num_layers,
            num_single_layers=args.num_single_layers,
            attention_head_dim=head_dim,
            num_attention_heads=args.heads,
            joint_attention_dim=args.cond_dim,
            pooled_projection_dim=args.cond_dim,
            guidance_embeds=False,
            axes_dims_rope=axes_dims_rope,
        ),
    )


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at ``args.steps``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    floor = args.min_lr_ratio
    return args.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def update_ema(ema: BundledModel, live: BundledModel, step: int, decay: float) -> None:
    """EMA with the usual warm-up ``min(decay, (1 + step) / (10 + step))``."""
    rate = min(decay, (1.0 + step) / (10.0 + step))
    for module_ema, module_live in ((ema.transformer, live.transformer), (ema.class_conditioning, live.class_conditioning)):
        for p_ema, p_live in zip(module_ema.parameters(), module_live.parameters()):
            p_ema.lerp_(p_live, 1.0 - rate)


def flow_matching_loss(model: BundledModel, images: torch.Tensor, class_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rectified-flow loss: predict ``noise - x0`` from ``x_t = (1 - t) x0 + t noise``."""
    x0 = model.pack(images)
    batch = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.sigmoid(torch.randn(batch, generator=generator))  # logit-normal(0, 1), as SD3
    x_t = (1.0 - t[:, None, None]) * x0 + t[:, None, None] * noise
    text, pooled = model.class_conditioning(class_ids)
    velocity = model.transformer(
        hidden_states=x_t,
        encoder_hidden_states=text,
        pooled_projections=pooled,
        timestep=t,  # FluxTransformer2DModel multiplies by 1000 itself
        img_ids=model.conditioning(class_ids)["img_ids"],
        txt_ids=torch.zeros(model.spec.text_tokens, 3),
        return_dict=False,
    )[0]
    return torch.nn.functional.mse_loss(velocity, noise - x0)


def render_grid(model: BundledModel, path: Path, seeds: int, num_steps: int, scale: int = 4) -> None:
    """Save a ``classes x seeds`` grid of samples, upscaled with nearest neighbour."""
    from PIL import Image

    model.transformer.eval()
    class_ids = torch.arange(model.num_classes).repeat_interleave(seeds)
    images = model.sample(class_ids, num_steps=num_steps, generator=torch.Generator().manual_seed(1234))
    size = model.spec.image_size
    pad = 2
    rows, cols = model.num_classes, seeds
    canvas = torch.ones(3, rows * (size + pad) + pad, cols * (size + pad) + pad)
    for index, image in enumerate(images):
        r, c = divmod(index, cols)
        top, left = pad + r * (size + pad), pad + c * (size + pad)
        canvas[:, top : top + size, left : left + size] = image
    array = (canvas.permute(1, 2, 0) * 255).round().byte().numpy()
    picture = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    previous_steps = 0
    if args.init_from is not None:
        model = load_bundled(args.init_from / WEIGHTS_FILE, args.init_from / CONFIG_FILE)
        model.transformer.requires_grad_(True)
        model.class_conditioning.requires_grad_(True)
        previous_steps = int(model.spec.training.get("steps", 0)) + int(model.spec.training.get("previous_steps", 0))
        model.spec.training.clear()
        model.spec.training["previous_steps"] = previous_steps
        spec = model.spec
        print(f"continuing from {args.init_from} ({previous_steps} steps already)", flush=True)
    else:
        spec = model_spec(args)
        model = new_bundled_model(spec, seed=args.seed)
    ema = copy.deepcopy(model) if args.ema > 0 else model
    parameters = list(model.transformer.parameters()) + list(model.class_conditioning.parameters())
    count = sum(p.numel() for p in parameters)
    print(f"model: {count / 1e6:.2f} M parameters ({count * 4 / 2**20:.1f} MiB float32), {spec.transformer}", flush=True)
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)
    data_config = ShapeDataConfig(image_size=args.image_size, position_range=args.position_range)
    generator = torch.Generator().manual_seed(args.seed + previous_steps)  # fresh data when continuing
    model.transformer.train()

    start = time.perf_counter()
    running_loss = None
    step = 0
    progress = tqdm(total=args.steps, desc="train", unit="step", mininterval=5.0, dynamic_ncols=True)

    def save(final: bool) -> None:
        elapsed = time.perf_counter() - start
        ema.spec.training.update(
            steps=step, minutes=round(elapsed / 60, 2), loss_ema=round(running_loss or float("nan"), 5),
            batch_size=args.batch_size, lr=args.lr, ema=args.ema, seed=args.seed, threads=args.threads,
            objective="rectified flow, velocity = noise - x0, t ~ logit-normal(0, 1)", final=final,
            data=dataclasses.asdict(data_config),
        )
        weights_path, _ = ema.save(args.out)
        tqdm.write(f"saved {weights_path} at step {step} ({weights_path.stat().st_size / 2**20:.2f} MiB)")

    while step < args.steps:
        if time.perf_counter() - start > args.minutes * 60:
            tqdm.write(f"time budget of {args.minutes} min reached at step {step}")
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        images, class_ids = make_batch(args.batch_size, generator, len(CLASS_NAMES), data_config)
        loss = flow_matching_loss(model, images, class_ids, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if ema is not model:
            update_ema(ema, model, step, args.ema)
        step += 1
        value = loss.item()
        running_loss = value if running_loss is None else 0.98 * running_loss + 0.02 * value
        progress.update(1)
        progress.set_postfix(loss=f"{running_loss:.4f}", lr=f"{learning_rate(step - 1, args):.2e}", refresh=False)
        if step % 25 == 0:
            elapsed = time.perf_counter() - start
            tqdm.write(f"step {step} loss {running_loss:.4f} elapsed {elapsed / 60:.1f} min ({elapsed / step:.2f} s/step)")
        if args.save_every and step % args.save_every == 0:
            save(final=False)
    progress.close()
    save(final=True)
    if args.grid:
        render_grid(ema, Path(args.grid), args.grid_seeds, args.grid_steps)
        print(f"sample grid written to {args.grid}", flush=True)


if __name__ == "__main__":
    main()
