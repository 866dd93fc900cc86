"""A tiny DiT written here (not diffusers), with switches: a mean over tokens (a token-mixing
op: rewritten, its operand completed from a cache), and two near misses that must NOT be
rewritten: a cumulative sum over tokens, attention written by hand."""
import torch.nn.functional as F
from torch import nn


class ToyDiT(nn.Module):
    """hidden_states [B, C, H, W] -> patches [B, N, D] -> blocks -> [B, C, H, W]."""

    def __init__(self, channels=4, dim=16, heads=2, layers=2, token_mean=False, manual_attention=False,
                 token_cumsum=False):
        super().__init__()
        self.heads, self.token_mean, self.manual_attention = heads, token_mean, manual_attention
        self.token_cumsum = token_cumsum
        self.embed = nn.Conv2d(channels, dim, 2, stride=2)
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(layers))
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.out = nn.Linear(dim, channels * 4)

    def forward(self, hidden_states):
        b, c, h, w = hidden_states.shape
        x = self.embed(hidden_states).flatten(2).transpose(1, 2)        # [B, N, D]
        for qkv, proj in zip(self.qkv, self.proj):
            q, k, v = qkv(F.layer_norm(x, x.shape[-1:])).chunk(3, dim=-1)
            q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
            if self.manual_attention:
                a = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1) @ v
            else:
                a = F.scaled_dot_product_attention(q, k, v)
            x = x + proj(a.transpose(1, 2).flatten(2))
            if self.token_mean:
                x = x + x.mean(dim=1, keepdim=True)
            if self.token_cumsum:
                x = x + x.cumsum(dim=1) / x.shape[1]
        out = self.out(x)                                              # [B, N, 4C]
        out = out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return (out.reshape(b, c, h, w),)
