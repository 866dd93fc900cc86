"""How well jano's warm-up analysis predicts where the bundled model keeps changing.

jano freezes a skipped token's output until the next refresh, so the error it makes in a
region grows with how much that region's velocity still changes after the warm-up. For
each seed this runs the full model, scores the blocks from the warm-up latents as jano
does (FLUX preset), and reports the Spearman rank correlation between a block's score and
its later velocity change, sum over steps after warm-up of |v[t+1] - v[t]| (per token,
Euclidean over channels, summed over the block). 1 is a perfect ranking, 0 none.

    python benchmarks/region_prediction.py [--seeds 8] [--steps 50]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from jano_compile.analyzer import analyze
from jano_compile.config import resolve_config
from jano_compile.models import bundled


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().float()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args(argv)
    model = bundled()
    config = resolve_config("flux", {})
    grid = (1, *model.grid)
    _, bh, bw = config.block_size_for(grid)
    rows, cols = model.grid
    found = []
    for seed in range(args.seeds):
        noise = model.initial_noise(1, torch.Generator().manual_seed(seed))
        received = [noise[0]]                    # the tokens each step receives, [N, C]
        model.sample([seed % model.num_classes], args.steps, noise=noise,
                     callback=lambda step, t, tokens: received.append(tokens[0].clone()))
        analysis = analyze(received[:config.warmup_steps], grid, config)
        after = torch.stack(received[config.warmup_steps:])          # [steps - W + 1, N, C]
        velocity = after[1:] - after[:-1]
        change = (velocity[1:] - velocity[:-1]).norm(dim=-1).sum(0)  # [N]
        per_block = change.view(rows // bh, bh, cols // bw, bw).sum((1, 3)).flatten()
        found.append(spearman(analysis.block_scores.flatten(), per_block))
        print(f"seed {seed}: Spearman(score, later velocity change) = {found[-1]:.2f}")
    print(f"mean {statistics.fmean(found):.2f}, range {min(found):.2f} .. {max(found):.2f} "
          f"({args.seeds} seeds, {args.steps} steps, warm-up {config.warmup_steps}, block {bh}x{bw} tokens)")


if __name__ == "__main__":
    main()
