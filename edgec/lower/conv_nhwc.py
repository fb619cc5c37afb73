"""The NHWC layout (``lower.build(layout="nhwc")``): ``convert`` puts a Relax module's convs in
NHWC before fusion, ``resolve`` picks the layout for ``auto``, and the ``conv2d_nhwc`` template
schedules the resulting kernels.

TVM legalizes an NHWC conv (``conv2d_nhwc`` / ``group_conv2d_nhwc`` block, weight
``[KH, KW, C/g, F]``) into a PrimFunc of the usual shape: padding, the conv, an injective epilogue
(bias, residual add, ReLU/clip). Output channels are the innermost, contiguous axis, so every
conv is vectorized over them:

* dense and grouped convs: the output is tiled ``xb`` columns x ``fb`` channels, accumulated in
  registers; each input pixel is broadcast against ``fb`` contiguous weights (packed at compile
  time to ``[F/fb, KH, KW, C/g, fb]``, ``meta_schedule.layout_rewrite_preproc``). A 1x1 conv is
  the GEMM ``[H*W, C] x [C, F]`` with this register tile.
* depthwise convs: the input is per channel, so a vector of ``fb`` channels of ``xb`` output
  pixels are independent accumulators; input and weight vectors are both contiguous.

``order`` puts the output-channel blocks outside the rows (``fy``: a weight block stays in cache
for a whole channel slice) or inside them (``yf``: an input row stays in cache for every channel
block); the leading loops are fused and parallel. ``pad`` computes the zero padding per parallel
iteration (``row``), once for the whole input in its own parallel loop (``root``) or inline in
the conv's reads (``inline``; a 1x1 conv without padding always inlines its copy).
"""

from __future__ import annotations

import warnings

from tvm import s_tir, tirx

# (edgec.lower.schedules is imported in the functions: it imports this module for TEMPLATES)

BLOCKS = ("conv2d_nhwc", "group_conv2d_nhwc")
LAYOUTS = ("auto", "nchw", "nhwc")
# ConvertLayout's targets: convs in NHWC; transposed convs stay NCHW (TVM 0.27 cannot lower an
# NHWC conv2d_transpose: PP-OCRv4 det failed in VM codegen)
DESIRED = {"relax.nn.conv2d": ["NHWC", "HWIO"], "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}


def resolve(layout: str, model) -> str:
    """The layout for ``model`` (ONNX): ``auto`` is ``nhwc`` for a model with depthwise convs
    (MobileNetV2 ~2x faster than in NCHW), else ``nchw`` (NCHW keeps Winograd for dense 3x3
    convs: ResNet-18 was 1.4x slower in NHWC; docs/BENCHMARKS.md)."""
    if layout != "auto":
        return layout
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:  # weights may also be Constant nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            shapes[node.output[0]] = list(node.attribute[0].t.dims)
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = shapes.get(node.input[1]) if node.op_type == "Conv" else None
        if group > 1 and weight and len(weight) == 4 and weight[1] == 1:
            return "nhwc"
    return "nchw"


def convert(mod):
    """Every 2-D conv of ``mod`` in NHWC (weights HWIO), the layout propagated through the ops
    between convs: constants are folded first (a bias reshaped at run time would stop it) and
    the weights and biases transposed at compile time after."""
    from tvm import relax

    try:
        converted = relax.transform.FoldConstant()(mod)
        converted = _fold_transposes(relax.transform.ConvertLayout(DESIRED)(converted))
    except (RuntimeError, ValueError, TypeError) as e:  # an op TVM cannot re-lay-out: keep NCHW
        warnings.warn(f"NHWC layout not applied: {str(e).strip()[:200]}", stacklevel=2)
        return mod
    stuck = _unlegalized(converted) - _unlegalized(mod)
    if stuck:  # an op ConvertLayout moved to a layout its lowering does not support
        warnings.warn(f"NHWC layout not applied: {', '.join(sorted(stuck))} in NHWC cannot be "
                      "lowered", stacklevel=2)  # fmt: skip
        return mod
    return converted


def _fold_transposes(mod):
    """``permute_dims`` of a constant (what ConvertLayout puts on weights and biases) as the
    transposed constant, in numpy (FoldConstant compiles a kernel per weight: ~4 s for
    MobileNetV2)."""
    import numpy as np
    import tvm
    from tvm import relax

    permute = tvm.ir.Op.get("relax.permute_dims")

    @relax.expr_functor.mutator
    class Fold(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            arg = call.args[0] if call.args else None
            if call.op.same_as(permute) and isinstance(arg, tvm.ir.expr.Constant):
                value = arg.value.numpy()
                axes = None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
                return relax.const(np.ascontiguousarray(np.transpose(value, axes)), value.dtype)
            return call

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = Fold().visit_expr(func)
    return mod


def _unlegalized(mod) -> set[str]:
    """Relax ops that ``LegalizeOps`` leaves in ``mod`` (lowered by nothing later)."""
    import tvm
    from tvm import relax

    left: set[str] = set()

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            name = expr.op.name
            if name.startswith(("relax.nn.", "relax.image.")):
                left.add(name)

    for func in relax.transform.LegalizeOps()(mod).functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return left


class Conv2dNhwc:
    name = "conv2d_nhwc"

    def match(self, func: tirx.PrimFunc) -> dict:
        from edgec.lower import schedules as S

        sch = s_tir.Schedule(func)
        blocks = S._blocks(sch)
        if not any(b["name"] in BLOCKS for b in blocks):
            raise S.NotMine("no NHWC conv block")
        index, conv = S._anchor(blocks)
        if conv["name"] not in BLOCKS or conv["spatial"] != 4 or conv["reduce"] != 3:
            raise S.Decline("the reduction is not the NHWC conv")
        if str(conv["writes"].dtype) != "float32":
            raise S.Decline(f"{conv['writes'].dtype} output (float32 only)")
        n, h, w, f = conv["extents"][:4]
        kh, kw, cg = conv["extents"][4:]
        data, weight = conv["reads"]
        wparam = S._param_index(func, weight)
        if wparam is None or [int(d) for d in weight.shape] != [kh, kw, cg, f]:
            raise S.Decline("the weight is not a [KH, KW, C/g, F] function parameter")
        if index != len(blocks) - 1 and blocks[-1]["extents"] != conv["extents"][:4]:
            raise S.Decline("the output is not the convolution's shape")
        c = int(data.shape[3])
        groups = c // cg
        return {
            "n": n, "h": h, "w": w, "f": f, "c": c, "kh": kh, "kw": kw, "cin_per_group": cg,
            "og": f // groups, "depthwise": cg == 1 and f == groups,
            "anchor": index, "weight_param": wparam, "padded": index > 0,
            "flops": 2 * n * h * w * f * cg * kh * kw,
        }  # fmt: skip

    def _fbs(self, info: dict, lanes: int) -> list[int]:
        from edgec.lower import schedules as S

        return S._divisors(_span(info), (2 * lanes, lanes, lanes // 2, 4))

    def space(self, info: dict, lanes: int) -> list[dict]:
        fbs = self._fbs(info, lanes)
        out = [self.default(info, lanes)]
        xbs = (2, 4, 7, 8) if info["depthwise"] else (4, 6, 7, 8, 14)
        pad = out[0]["pad"]  # the tile grid with the default's padding, then the others
        for fb in [b for b in fbs if b >= lanes // 2][:2]:
            for xb in sorted({min(info["w"], x) for x in xbs}):
                if fb * xb > 16 * lanes:  # more accumulators than registers
                    continue
                for order in ("yf", "fy"):
                    out.append({"fb": fb, "xb": xb, "order": order, "pad": pad})
        if self._needs_pad(info):
            out += [{**out[0], "pad": p} for p in ("row", "root", "inline") if p != pad]
        return list({tuple(sorted(k.items())): k for k in out}.values())

    def _needs_pad(self, info: dict) -> bool:
        return info["padded"] and not (info["kh"] == info["kw"] == 1)

    def default(self, info: dict, lanes: int) -> dict:
        # one vector of output channels and 7-8 columns: the fastest on most MobileNetV2 layers
        fbs = self._fbs(info, lanes)
        if not fbs:
            return {"fb": 0, "xb": 0, "order": "yf", "pad": "inline"}  # apply declines
        fb = next((b for b in fbs if b <= lanes), fbs[-1])
        xb = next((x for x in (8, 7, 14, 6, 4) if info["w"] % x == 0), 8)
        # depthwise: the pad inlined was ~2x faster than per row on every MobileNetV2 layer (a
        # padded copy costs as much as 9 MACs per output); dense convs: no difference
        pad = "row" if self._needs_pad(info) and not info["depthwise"] else "inline"
        if info["depthwise"]:
            xb = next((x for x in (7, 8, 4) if info["w"] % x == 0), 4)
        return {"fb": fb, "xb": min(xb, info["w"]), "order": "yf", "pad": pad}

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: dict) -> tirx.PrimFunc:
        from edgec.lower import schedules as S

        fb, xb = knobs["fb"], knobs["xb"]
        if not fb or _span(info) % fb:
            raise S.Decline(f"no channel block divides {_span(info)} output channels")
        pack = info["weight_param"] in info.get("constants", ())
        if pack:
            func = func.with_attr("layout_free_buffers", [info["weight_param"]])
        sch = s_tir.Schedule(func)
        blocks = S._blocks(sch)
        conv = blocks[info["anchor"]]["block"]
        if info["anchor"] == len(blocks) - 1:  # no epilogue: accumulate in a buffer, then copy
            out = sch.cache_write(conv, 0, "global")
        else:
            out = S._inline_epilogue(sch, blocks, info["anchor"])["block"]
        n, y, x, f = sch.get_loops(out)
        fo, fi = sch.split(f, [None, fb])
        xo, xi = sch.split(x, [None, xb])
        outer = [n, fo, y] if knobs["order"] == "fy" else [n, y, fo]
        sch.reorder(*outer, xo, xi, fi)
        (cx, cf), reduction = S.tile_at(sch, conv, xo, (xb, fb))
        S.vector_tile(sch, reduction, cx, cf)
        if pack:
            wb = sch.cache_read(conv, 1, "global")
            sch.transform_layout(wb, ("write", 0),
                                 lambda u, v, c, o: (o // fb, u, v, c, o % fb))  # fmt: skip
            sch.annotate(wb, "meta_schedule.layout_rewrite_preproc", True)
        if fb > 1:
            sch.vectorize(fi)
        S._parallel_outer(sch, outer)
        if reduction:
            sch.decompose_reduction(conv, reduction[0])
        producers = blocks[: info["anchor"]]
        for b in producers[:-1]:  # e.g. the model input's NCHW -> NHWC transpose
            sch.compute_inline(b["block"])
        if producers:
            _schedule_pad(sch, producers[-1]["block"], out, knobs["pad"])
        return sch.mod["main"]


def _span(info: dict) -> int:
    """Output channels a vector may span: all of them when each group reads one input channel
    (depthwise, channel multipliers) or there is one group, else a group's (the input index is
    then the same for the whole vector)."""
    return info["f"] if info["cin_per_group"] == 1 or info["og"] == info["f"] else info["og"]


def _schedule_pad(sch: s_tir.Schedule, pad, out, where: str) -> None:
    from edgec.lower import schedules as S

    if where == "inline":
        sch.compute_inline(pad)
        return
    if where == "row":  # the rows one parallel iteration reads, while they are in cache
        sch.compute_at(pad, sch.get_loops(out)[0])
    else:
        S._parallel_outer(sch, sch.get_loops(pad)[:-1])
    inner = sch.get_loops(pad)[-1]
    extent = int(sch.get(inner).extent)
    width = next((w for w in (16, 8) if extent % w == 0), 0)
    if width:
        _, vec = sch.split(inner, [None, width])
        sch.vectorize(vec)


TEMPLATE = Conv2dNhwc()
