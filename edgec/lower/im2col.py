"""im2col + GEMM: ``Col[n, g, i, j, (c, r, q)] = Xpad[n, g*C/g + c, i*sh + r*dh, j*sw + q*dw]``
(padding folded into the copy), then ``Y[n, o, i, j] = sum_k Col[n, o//(O/g), i, j, k] *
W[o, k]`` with the weight reshaped to ``[O, C/g*KH*KW]`` (a GEMM, O x pixels x K). Scheduled
by the same template as im2win (``im2win.PackedConv``): vectorized over output channels, the
column matrix one output row at a time (``stage=row``) or whole (``full``)."""

from __future__ import annotations

import numpy as np

from edgec.lower.conv_algos import ConvSpec
from edgec.lower.im2win import PackedConv, _padded


def relax_parts(spec: ConvSpec, weight: np.ndarray, _option=None):
    packed = np.ascontiguousarray(weight.reshape(spec.cout, -1))
    return packed, lambda x, w: compute(x, w, spec)


def compute(x, w, spec: ConvSpec):
    from tvm import te

    s = spec
    (sh, sw), (dh, dw) = s.stride, s.dilation
    taps = s.kh * s.kw

    def col_value(n, g, i, j, k):
        c, r, q = k // taps, k % taps // s.kw, k % s.kw
        return _padded(x, s, n, g * s.cg + c, i * sh + r * dh, j * sw + q * dw)

    col = te.compute((s.n, s.groups, s.ho, s.wo, s.cg * taps), col_value, name="im2col_pack")
    k = te.reduce_axis((0, s.cg * taps), "k")
    return te.compute(
        (s.n, s.cout, s.ho, s.wo),
        lambda n, o, i, j: te.sum(
            col[n, 0 if s.groups == 1 else o // s.og, i, j, k] * w[o, k], axis=k
        ),
        name="im2col_conv",
    )


TEMPLATE = PackedConv("im2col")
