"""RepVGG-A0 (Ding et al. 2021) in train form (multi-branch) and deploy form (one 3x3 conv).

`RepBlock` is shared with MobileOne: a sum of `branches` kxk conv+BN branches, an optional
1x1 conv+BN "scale" branch (only when k > 1) and an identity BN (only when cin == cout and
stride == 1), followed by ReLU.  Its deploy form is a single kxk conv with bias (same
stride/padding/groups) followed by ReLU; `reparameterize` maps one onto the other exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GAIN_WITH_IDENTITY = 0.25  # conv-branch init gain in blocks that also have an identity branch


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


def fuse_bn(weight: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BN into the preceding bias-free conv weight: returns (W', b')."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepBlock(nn.Module):
    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        groups: int = 1,
        branches: int = 1,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        self.cin, self.cout, self.k, self.stride, self.groups = cin, cout, k, stride, groups
        self.deploy = deploy
        self.act = nn.ReLU()
        if deploy:
            self.reparam = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True)
            return
        self.dense = nn.ModuleList(ConvBN(cin, cout, k, stride, groups) for _ in range(branches))
        self.scale = ConvBN(cin, cout, 1, stride, groups) if k > 1 else None
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        # He-style init split across the summed conv branches, with a smaller budget next to an
        # identity branch, so activations stay O(1) through deep random-init stacks.
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        gain = GAIN_WITH_IDENTITY if self.identity is not None else 2.0
        for conv in convs:
            std = (gain / (conv.weight[0].numel() * len(convs))) ** 0.5
            nn.init.normal_(conv.weight, 0.0, std)

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.act(self.reparam(x))
        out = self.dense[0](x)
        for branch in self.dense[1:]:
            out = out + branch(x)
        if self.scale is not None:
            out = out + self.scale(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)

    @torch.no_grad()
    def fused(self) -> tuple[Tensor, Tensor]:
        """The (weight, bias) of the equivalent single kxk conv."""
        w = torch.zeros_like(self.dense[0].conv.weight)
        b = torch.zeros(self.cout)
        for branch in self.dense:
            wi, bi = fuse_bn(branch.conv.weight, branch.bn)
            w, b = w + wi, b + bi
        if self.scale is not None:
            wi, bi = fuse_bn(self.scale.conv.weight, self.scale.bn)
            p = self.k // 2
            w, b = w + F.pad(wi, [p, p, p, p]), b + bi
        if self.identity is not None:
            eye = torch.zeros_like(w)
            per_group = self.cin // self.groups
            for c in range(self.cin):
                eye[c, c % per_group, self.k // 2, self.k // 2] = 1.0
            wi, bi = fuse_bn(eye, self.identity)
            w, b = w + wi, b + bi
        return w, b


@torch.no_grad()
def rescale_init_(model: nn.Module, shape: tuple[int, ...] = (2, 3, 224, 224)) -> None:
    """LSUV-style: scale the conv weights of every train-form RepBlock without an identity branch
    so that its output has unit RMS on a fixed random input.

    Random BN statistics make activations grow ~1.1-1.5x per multi-branch block; resetting the
    scale at the identity-free blocks keeps the whole net O(1) (max block RMS ~20 for S0).
    """

    def hook(block: nn.Module, args: tuple[Tensor, ...]) -> None:
        if block.identity is not None:
            return
        for _ in range(3):  # BN offsets make the output only roughly linear in the weights
            rms = block.forward(args[0]).pow(2).mean().sqrt()
            for conv in block.modules():
                if isinstance(conv, nn.Conv2d):
                    conv.weight.div_(rms)

    blocks = [m for m in model.modules() if isinstance(m, RepBlock) and not m.deploy]
    if not blocks:
        return
    handles = [b.register_forward_pre_hook(hook) for b in blocks]
    try:
        model.eval()(torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def reparameterize(train: nn.Module, deploy: nn.Module) -> nn.Module:
    """Copy `train` (multi-branch) into `deploy` (same config, deploy=True); returns `deploy`."""
    blocks = {n: m for n, m in train.named_modules() if isinstance(m, RepBlock)}
    for name, mod in deploy.named_modules():
        if isinstance(mod, RepBlock):
            w, b = blocks[name].fused()
            mod.reparam.weight.copy_(w)
            mod.reparam.bias.copy_(b)
        elif isinstance(mod, nn.Linear):
            mod.load_state_dict(train.get_submodule(name).state_dict())
    return deploy.eval()


class RepVGG(nn.Module):
    def __init__(
        self,
        layers: Sequence[int] = (1, 2, 4, 14, 1),
        widths: Sequence[int] = (48, 48, 96, 192, 1280),
        num_classes: int = 1000,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        cin = 3
        for n, cout in zip(layers, widths, strict=True):
            blocks = []
            for i in range(n):  # first block of each stage has stride 2
                blocks.append(RepBlock(cin, cout, 3, 2 if i == 0 else 1, deploy=deploy))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.pool(self.stages(x)).flatten(1))

    def rescale_init_(self) -> None:
        rescale_init_(self)


def repvgg_a0() -> RepVGG:
    return RepVGG(deploy=False)


def repvgg_a0_deploy() -> RepVGG:
    """The exact re-parameterization of `repvgg_a0()` drawn from the current RNG state.

    With the same seed, `edgec.models.build("repvgg_a0_deploy", s)` computes the same function
    as `build("repvgg_a0", s)`.
    """
    from edgec.models import finish_init

    train = finish_init(repvgg_a0())
    return reparameterize(train, RepVGG(deploy=True))
