"""im2col + GEMM: ``Col[n, g, i, j, (c, r, q)] = Xpad[n, g*C/g + c, i*sh + r*dh, j*sw + q*dw]``
(padding folded into the copy), then ``Y[n, o, i, j] = sum_k Col[n, o//(O/g), i, j, k] *
W[o, k]`` (a GEMM, O x pixels x K; k = (c, r, q) kept as three axes). Scheduled
by the same template as im2win (``im2win.PackedConv``): vectorized over output channels, the
column matrix one output row at a time (``stage=row``) or whole (``full``)."""

from __future__ import annotations

import numpy as np

from edgec.lower.conv_algos import ConvSpec, padded
from edgec.lower.im2win import PackedConv


def relax_parts(spec: ConvSpec, weight: np.ndarray, _option=None):
    return np.ascontiguousarray(weight), lambda x, w: compute(x, w, spec)


def compute(x, w, spec: ConvSpec):
    """The column matrix as ``[n, g, i, j, c, r, q]`` (row (i, j), column (c, r, q) of the
    im2col GEMM, no index division); the reduction runs over the whole row."""
    from tvm import te

    s = spec
    (sh, sw), (dh, dw) = s.stride, s.dilation
    col = te.compute(
        (s.n, s.groups, s.ho, s.wo, s.cg, s.kh, s.kw),
        lambda n, g, i, j, c, r, q: padded(x, s, n, g * s.cg + c, i * sh + r * dh, j * sw + q * dw),
        name="im2col_pack",
    )
    c = te.reduce_axis((0, s.cg), "c")
    r = te.reduce_axis((0, s.kh), "r")
    q = te.reduce_axis((0, s.kw), "q")
    return te.compute(
        (s.n, s.cout, s.ho, s.wo),
        lambda n, o, i, j: te.sum(
            col[n, 0 if s.groups == 1 else o // s.og, i, j, c, r, q] * w[o, c, r, q],
            axis=[c, r, q],
        ),
        name="im2col_conv",
    )


TEMPLATE = PackedConv("im2col")
