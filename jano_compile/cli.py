"""Command line: `jano-compile demo`.

The demo generates images with the bundled model twice, with plain torch.compile and with
jano, prints time per image, speedup, PSNR and SSIM against the full model, and writes one
PNG with a row per image: full | jano | region map.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from tqdm import tqdm

from .analyzer import render_region_map
from .controller import controller
from .metrics import psnr, ssim


def _to_pil(image: torch.Tensor, size: int):
    from PIL import Image
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array).resize((size, size), Image.NEAREST)


def _timed_sample(model, transformer, class_id, seed, steps):
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    image = model.sample([class_id], num_steps=steps, generator=generator, transformer=transformer)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return image[0], time.perf_counter() - t0


def demo(args) -> int:
    from PIL import Image

    from .models import bundled
    model = bundled(device=args.device)
    transformer = model.transformer
    options = {"lowering": args.lowering}
    if args.threshold_mode:
        options["threshold_mode"] = args.threshold_mode
    if args.recipe:
        options["recipe"] = args.recipe
    # "eager" (tests, debugging): the model itself against jano's rewritten graph run eagerly
    plain = transformer if args.lowering == "eager" else torch.compile(transformer, dynamic=False)
    jano = torch.compile(transformer, backend="jano", dynamic=False, options=options)
    ctl = controller(jano)
    ctl.set_num_inference_steps(args.steps)   # places the cool-down (short runs: all full)
    seeds = list(range(args.seeds))
    print(f"bundled model: {model.num_image_tokens} image tokens, classes {', '.join(model.class_names)}; "
          f"{args.steps} steps, {len(seeds)} image(s), device {args.device}")
    with torch.no_grad():
        print("compiling (plain Inductor and jano; tens of seconds on a CPU) ..." if args.lowering == "inductor"
              else "first calls (jano's rewritten graph, run eagerly) ...", flush=True)
        _timed_sample(model, plain, 0, 0, min(args.steps, 2))
        _timed_sample(model, jano, 0, 0, args.steps)
        rows, results = [], []
        for seed in tqdm(seeds, desc="images"):
            class_id = seed % model.num_classes
            full, t_full = _timed_sample(model, plain, class_id, seed, args.steps)
            fast, t_fast = _timed_sample(model, jano, class_id, seed, args.steps)
            try:
                regions = ctl.region_map()
            except RuntimeError:
                regions = torch.full((1, *model.grid), 2)
            results.append((t_full, t_fast, psnr(fast, full), ssim(fast, full)))
            size = 128
            rows.append([_to_pil(full, size), _to_pil(fast, size),
                         render_region_map(regions).resize((size, size), Image.NEAREST)])
    stats = ctl.stats()
    print(f"\n{'image':>5} {'plain s':>8} {'jano s':>8} {'speedup':>8} {'PSNR dB':>8} {'SSIM':>6}")
    for seed, (a, b, p, s) in zip(seeds, results):
        print(f"{seed:>5} {a:8.2f} {b:8.2f} {a / b:7.2f}x {_decibels(p)} {s:6.3f}")
    mean = lambda k: sum(r[k] for r in results) / len(results)   # noqa: E731
    print(f"{'mean':>5} {mean(0):8.2f} {mean(1):8.2f} {mean(0) / mean(1):7.2f}x {_decibels(mean(2))} {mean(3):6.3f}")
    if len(results) > 1:
        worst = min(results, key=lambda r: r[2])
        print(f"{'worst':>5} {'':8} {'':8} {'':8} {_decibels(worst[2])} {min(r[3] for r in results):6.3f}")
    regions = ("no region analysis (the run is too short for warm-up + cool-down)"
               if stats["active_fraction_map"] is None else
               f"regions {stats['active_fraction_map']:.0%} active, {stats['medium_fraction_map']:.0%} medium")
    print(f"jano: {stats['compute_saved']:.0%} of image-token work skipped in the last generation; {regions}")
    canvas = Image.new("RGB", (3 * 128 + 20, len(rows) * 128 + 5 * (len(rows) - 1)), "white")
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            canvas.paste(tile, (j * 138, i * 133))
    canvas.save(args.out)
    print(f"wrote {args.out} (per row: full | jano | region map: blue static, amber medium, red active)")
    return 0


def _decibels(value: float) -> str:
    """A PSNR for the table (8 wide): identical images (infinite PSNR) read "same"."""
    return f"{'same':>8}" if value == float("inf") else f"{value:8.2f}"


def _check_device(parser, device: str) -> None:
    try:
        kind = torch.device(device).type
    except RuntimeError:
        parser.error(f"--device {device!r} is not a device torch knows (e.g. cpu, cuda, cuda:1)")
    if kind == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch build or machine has no CUDA; use --device cpu")
    if kind == "meta":
        parser.error("--device meta holds no values, so it cannot generate images; use --device cpu")
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as e:
        reason = str(e).splitlines()[0].split(". ")[0][:160] if str(e) else type(e).__name__
        parser.error(f"--device {device!r} cannot be used here ({reason}); use --device cpu")


def _check_out(parser, out: str) -> None:
    """Said now, not after every image is generated: `out` must be an image file PIL can
    write (its extension says which), in a directory that exists, writable."""
    from PIL import Image
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        parser.error(f"--out {out}: the directory {out_dir} does not exist")
    if os.path.isdir(out):
        parser.error(f"--out {out} is a directory; give an image file name, e.g. {os.path.join(out, 'jano_demo.png')}")
    if os.path.splitext(out)[1].lower() not in Image.registered_extensions():
        parser.error(f"--out {out}: give an image file name whose extension says the format, e.g. jano_demo.png")
    existed = os.path.exists(out)
    try:        # the one sure test of writability (permissions, read-only file systems, root)
        with open(out, "ab"):
            pass
    except OSError as e:
        parser.error(f"--out {out} cannot be written ({e.strerror or e}); give a path in a writable directory")
    if not existed:
        os.remove(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jano-compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="plain torch.compile vs jano on the bundled model")
    d.add_argument("--steps", type=int, default=50, help="denoising steps per image (default 50)")
    d.add_argument("--seeds", type=int, default=2, help="number of images, one seed each (default 2)")
    d.add_argument("--out", default="jano_demo.png",
                   help="the picture written, a row per image: full | jano | region map (default jano_demo.png)")
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda where available, else cpu")
    d.add_argument("--lowering", default="inductor", choices=["inductor", "eager"],
                   help="how both models run: compiled by Inductor (default), or their graphs run eagerly")
    d.add_argument("--threshold-mode", choices=["fixed", "quantile"], default=None,
                   help="region levels from the reference's fixed thresholds or from quantiles "
                        "(default: the recipe's)")
    d.add_argument("--recipe", choices=["forecast", "paper"], default=None,
                   help="forecast (the default): every token every 3rd step, forecast between; "
                        "paper: Jano as published (regions, held outputs)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.steps < 1 or args.seeds < 1:
            d.error("--steps and --seeds must be at least 1")
        _check_device(d, args.device)
        _check_out(d, args.out)
        return demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
