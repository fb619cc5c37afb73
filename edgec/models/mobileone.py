"""MobileOne-S0 (Vasu et al. 2023): train form (k=4 over-parameterized branches) and deploy form.

Follows apple/ml-mobileone: stem is one 3x3/s2 block (a single conv branch, as in the reference),
then 4 stages of [depthwise 3x3 block, pointwise 1x1 block] pairs, blocks (2, 8, 10, 1),
widths 64*0.75, 128, 256, 512*2 (S0 has no SE).  Blocks are `repvgg.RepBlock`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from edgec.models.repvgg import RepBlock, reparameterize, rescale_init_


class MobileOne(nn.Module):
    def __init__(
        self,
        blocks: Sequence[int] = (2, 8, 10, 1),
        widths: Sequence[int] = (48, 128, 256, 1024),
        branches: int = 4,
        num_classes: int = 1000,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        cin = min(64, widths[0])
        self.stem = RepBlock(3, cin, 3, 2, deploy=deploy)
        stages: list[nn.Module] = []
        for n, cout in zip(blocks, widths, strict=True):
            layers: list[nn.Module] = []
            for i in range(n):
                stride = 2 if i == 0 else 1
                layers.append(RepBlock(cin, cin, 3, stride, cin, branches, deploy))  # depthwise
                layers.append(RepBlock(cin, cout, 1, 1, 1, branches, deploy))  # pointwise
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.pool(self.stages(self.stem(x))).flatten(1))

    def rescale_init_(self) -> None:
        rescale_init_(self)


def mobileone_s0() -> MobileOne:
    return MobileOne(deploy=False)


def mobileone_s0_deploy() -> MobileOne:
    """The exact re-parameterization of `mobileone_s0()` drawn from the current RNG state."""
    from edgec.models import finish_init

    train = finish_init(mobileone_s0())
    return reparameterize(train, MobileOne(deploy=True))
