"""PSNR/SSIM helpers agree with scikit-image on random images."""
import pytest
import torch
from hypothesis import given, strategies as st

from jano_compile.metrics import psnr, ssim

metrics = pytest.importorskip("skimage.metrics")


@given(st.integers(0, 2**31 - 1), st.floats(0.01, 0.5))
def test_psnr_and_ssim_match_scikit_image(seed, noise):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(3, 24, 20, generator=g, dtype=torch.float64)
    img = (ref + noise * torch.randn(3, 24, 20, generator=g, dtype=torch.float64)).clamp(0, 1)
    a, b = img.numpy(), ref.numpy()
    assert psnr(img, ref) == pytest.approx(metrics.peak_signal_noise_ratio(b, a, data_range=1.0), rel=1e-9)
    expected = metrics.structural_similarity(b, a, data_range=1.0, channel_axis=0)
    assert ssim(img, ref) == pytest.approx(expected, abs=1e-9)


def test_identical_images():
    x = torch.rand(3, 16, 16)
    assert psnr(x, x) == float("inf") and ssim(x, x) == pytest.approx(1.0)
