"""Vision transformers: DeiT-tiny (Touvron et al. 2021) and a small SLAB model (Guo et al. 2024).

SLAB replaces LayerNorm with RepBN (`alpha * x + BatchNorm1d(x)` over channels, tokens
transposed to (B, C, N)) and softmax attention with ReLU-kernel "simplified linear attention"
plus a depthwise conv on V.  Attention is written out with matmuls (no SDPA) for exportability.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    def __init__(self, patch: int = 16, dim: int = 192) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Attention(nn.Module):
    """Multi-head softmax self-attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, D)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block; `norm` builds the normalization layer."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.norm1, self.attn = norm(dim), attn
        self.norm2, self.mlp = norm(dim), Mlp(dim, dim * mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class DeiT(nn.Module):
    def __init__(
        self,
        img: int = 224,
        patch: int = 16,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: int = 4,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(
            *(Block(dim, Attention(dim, heads), mlp_ratio, layer_norm) for _ in range(depth))
        )
        self.norm = layer_norm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class RepBN(nn.Module):
    """`alpha * x + BatchNorm1d(x)` on (B, N, C) tokens (BN over C); alpha starts at 1."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, 2)
        return (self.bn(x) + self.alpha * x).transpose(1, 2)


class LinearAttention(nn.Module):
    """SLAB linear attention: relu(Q) (relu(K)^T V) / (relu(Q) mean(relu(K))) + DWC(V)."""

    def __init__(self, dim: int, heads: int, grid: int, dwc_kernel: int = 5) -> None:
        super().__init__()
        self.heads, self.grid = heads, grid
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        d = dim // heads
        self.dwc = nn.Conv2d(d, d, dwc_kernel, padding=dwc_kernel // 2, groups=d)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        h, d, g = self.heads, c // self.heads, self.grid
        qkv = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = torch.relu(qkv[0]), torch.relu(qkv[1]), qkv[2]  # (B, H, N, D)
        z = 1.0 / (q @ k.mean(dim=2, keepdim=True).transpose(-2, -1) + 1e-6)  # (B, H, N, 1)
        kv = (k.transpose(-2, -1) @ v) * (1.0 / g**2)  # (B, H, D, D), mean over the N = g*g tokens
        out = (q @ kv) * z
        v_img = v.transpose(-2, -1).reshape(b * h, d, g, g)
        out = out + self.dwc(v_img).reshape(b, h, d, n).transpose(-2, -1)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SLAB(nn.Module):
    """Patch embed + pos embed, RepBN/linear-attention blocks, global average pool head."""

    def __init__(
        self,
        img: int = 224,
        patch: int = 16,
        dim: int = 192,
        depth: int = 4,
        heads: int = 3,
        mlp_ratio: int = 4,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        grid = img // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)
        self.blocks = nn.Sequential(
            *(Block(dim, LinearAttention(dim, heads, grid), mlp_ratio, RepBN) for _ in range(depth))
        )
        self.norm = RepBN(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.blocks(self.patch_embed(x) + self.pos_embed))
        return self.head(x.mean(dim=1))


def deit_tiny() -> DeiT:
    return DeiT()


def slab_tiny() -> SLAB:
    return SLAB()
