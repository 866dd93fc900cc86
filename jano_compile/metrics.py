"""Image quality against the full model: PSNR and SSIM on images in [0, 1].

SSIM follows scikit-image's `structural_similarity` defaults (7x7 uniform window, K1 0.01,
K2 0.03, sample covariance, mean over the window-valid area, channels averaged), so the
numbers compare with what papers report through it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(image: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> float:
    """PSNR in dB of `image` against `reference` (same shape, any layout)."""
    mse = torch.mean((image.double() - reference.double()) ** 2)
    if mse == 0:
        return float("inf")
    return float(10 * torch.log10(torch.tensor(data_range, dtype=torch.float64) ** 2 / mse))


def ssim(image: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0, win_size: int = 7) -> float:
    """Mean SSIM of [C, H, W] images (or [H, W])."""
    x, y = image.double(), reference.double()
    if x.dim() == 2:
        x, y = x[None], y[None]
    x, y = x[:, None], y[:, None]                     # [C, 1, H, W]: channels as a batch
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size} pixels")
    np_ = win_size ** 2
    cov_norm = np_ / (np_ - 1)
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)   # noqa: E731 - the window filter
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())
