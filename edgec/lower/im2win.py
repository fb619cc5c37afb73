"""Window-order convolution (im2win): TE compute, CPU schedule template, CUDA schedule.

The input is copied once into *window order* so that the reduction of each output pixel reads
one run (../shared/docs/rewrites.md section 4). Two layouts of the window tensor:

* ``nchw`` (the CPU paper): ``Win[n, c, i, m, r] = Xpad[n, c, i*sh + r*dh, m]``, filter
  ``[O, C/g, KW, KH]``; the ``KW*KH`` window of output column j starts at ``j*sw*KH``.
* ``nhwc`` (the follow-up paper's better CPU layout): ``Win[n, g, i, m, r, c]``, filter
  ``[O, KW, KH, C/g]``: the whole ``KW*KH*C/g`` reduction is one run.

``m`` spans only the padded columns some output reads (when the windows of neighbouring outputs
do not overlap, K_w taps within one stride as in 1x1 stride 2, only the ``W_o*K_w`` read ones:
the authors' "no duplication needed" case). Padding is folded into the window copy
(zero where the source is outside the input: no padded copy of the input), dilation is in the
indexing, groups index the window by ``o // (O/g)``. Depthwise convs stay direct (no channel
reduction to gain from). The CPU template vectorizes over output channels (weight packed to
``[O/fb, ..., fb]`` at compile time) with ``xb`` output columns per register tile; ``stage``
``row`` builds one output row's band per parallel iteration (workspace ``C*Wspan*KH`` per
thread, the "fused im2win"), ``full`` builds the whole window tensor first.
"""

from __future__ import annotations

import numpy as np

from edgec.lower.conv_algos import ConvSpec, padded

LAYOUTS = ("nhwc", "nchw")


def relax_parts(spec: ConvSpec, weight: np.ndarray, layout=None):
    """The packed weight and the TE function ``(x, packed) -> y`` for ``conv_algos``."""
    layout = layout or "nhwc"
    if layout not in LAYOUTS:
        raise ValueError(f"im2win layout must be one of {LAYOUTS}, not {layout!r}")
    if layout == "nhwc":  # [O, C/g, KH, KW] -> [O, KW, KH, C/g]
        packed = np.ascontiguousarray(weight.transpose(0, 3, 2, 1))
    else:  # -> [O, C/g, KW, KH]
        packed = np.ascontiguousarray(weight.transpose(0, 1, 3, 2))
    out_dtype = "int32" if spec.integer else None
    return packed, lambda x, w: compute(x, w, spec, layout, out_dtype)


def compute(x, w, spec: ConvSpec, layout: str = "nhwc", out_dtype: str | None = None):
    """``out_dtype`` (e.g. int32 for int8 x int8): the products and the sum in that type."""
    from tvm import te

    s = spec
    (sh, sw), (dh, dw) = s.stride, s.dilation

    def mul(a, b):
        return a.astype(out_dtype) * b.astype(out_dtype) if out_dtype else a * b

    def group(o):
        return 0 if s.groups == 1 else o // s.og

    def column(m):  # window column -> padded input column
        return m // s.kw * sw + m % s.kw * dw if s.window_compact else m

    def window(j, q):  # output column j, tap q -> window column
        return j * s.kw + q if s.window_compact else j * sw + q * dw

    if layout == "nhwc":
        win = te.compute(
            (s.n, s.groups, s.ho, s.wspan, s.kh, s.cg),
            lambda n, g, i, m, r, c: padded(x, s, n, g * s.cg + c, i * sh + r * dh, column(m)),
            name="im2win_pack",
        )
        q = te.reduce_axis((0, s.kw), "q")
        r = te.reduce_axis((0, s.kh), "r")
        c = te.reduce_axis((0, s.cg), "c")
        return te.compute(
            (s.n, s.cout, s.ho, s.wo),
            lambda n, o, i, j: te.sum(
                mul(win[n, group(o), i, window(j, q), r, c], w[o, q, r, c]), axis=[q, r, c]
            ),
            name="im2win_conv",
        )
    win = te.compute(
        (s.n, s.cin, s.ho, s.wspan, s.kh),
        lambda n, c, i, m, r: padded(x, s, n, c, i * sh + r * dh, column(m)),
        name="im2win_pack",
    )
    c = te.reduce_axis((0, s.cg), "c")
    q = te.reduce_axis((0, s.kw), "q")
    r = te.reduce_axis((0, s.kh), "r")
    return te.compute(
        (s.n, s.cout, s.ho, s.wo),
        lambda n, o, i, j: te.sum(
            mul(win[n, group(o) * s.cg + c, i, window(j, q), r], w[o, c, q, r]),
            axis=[c, q, r],
        ),
        name="im2win_conv",
    )


class PackedConv:
    """Template of the transformed-input convolutions (im2win, im2col): one injective packing
    block ``<name>_pack``, one reduction ``<name>_conv`` producing NCHW, an epilogue."""

    def __init__(self, name: str):
        self.name = name

    def match(self, func) -> dict:
        from edgec.lower import schedules as S

        sch = S.s_tir.Schedule(func)
        blocks = S._blocks(sch)
        names = [b["name"] for b in blocks]
        if f"{self.name}_conv" not in names or f"{self.name}_pack" not in names:
            raise S.NotMine(f"no {self.name} blocks")
        index, conv = S._anchor(blocks)
        if conv["name"] != f"{self.name}_conv" or conv["spatial"] != 4:
            raise S.Decline(f"the reduction is not {self.name}_conv")
        weight = conv["reads"][1]
        wparam = S._param_index(func, weight)
        if wparam is None:
            raise S.Decline("the weight is not a parameter")
        n, f, h, w = conv["extents"][:4]
        red = S._prod(conv["extents"][4:])
        pack = next(b for b in blocks if b["name"] == f"{self.name}_pack")
        # groups: the pack's axis 1 (nhwc window, im2col), or C / (C/g) (nchw window)
        groups = int(pack["extents"][1])
        if len(pack["extents"]) == 5 and self.name == "im2win":
            groups //= int(weight.shape[1])
        return {
            "n": n, "f": f, "h": h, "w": w, "anchor": index, "weight_param": wparam,
            "pack_elems": S._prod(pack["extents"]), "flops": 2 * n * f * h * w * red,
            "og": f // groups,
        }  # fmt: skip

    def _og(self, info: dict) -> int:
        # output channels per group: a vector of output channels must stay in one group
        return info["og"]

    def space(self, info: dict, lanes: int) -> list[dict]:
        from edgec.lower import schedules as S

        out = [self.default(info, lanes)]
        for fb in S._divisors(self._og(info), (lanes // 2, lanes, 2 * lanes)):
            for xb in sorted({min(info["w"], x) for x in (4, 7, 8, 14)}):
                for stage in ("row", "full"):
                    out.append({"fb": fb, "xb": xb, "stage": stage})
        return list({tuple(sorted(k.items())): k for k in out}.values())

    def default(self, info: dict, lanes: int) -> dict:
        from edgec.lower import schedules as S

        fbs = S._divisors(self._og(info), (lanes, lanes // 2, 8, 4, 2)) or [1]
        xb = next((x for x in (7, 8, 6, 4) if info["w"] % x == 0), 8)
        return {"fb": fbs[0], "xb": min(xb, info["w"]), "stage": "row"}

    def apply(self, func, info: dict, knobs: dict):
        from edgec.lower import schedules as S

        func = func.with_attr("layout_free_buffers", [info["weight_param"]])
        sch = S.s_tir.Schedule(func)
        blocks = S._blocks(sch)
        conv = blocks[info["anchor"]]["block"]
        pack = next(b["block"] for b in blocks if b["name"] == f"{self.name}_pack")
        if info["anchor"] == len(blocks) - 1:
            out = sch.cache_write(conv, 0, "global")
        else:
            out = S._inline_epilogue(sch, blocks, info["anchor"])["block"]
        fb, xb = knobs["fb"], knobs["xb"]
        n, f, y, x = sch.get_loops(out)
        fo, fi = sch.split(f, [None, fb])
        xo, xi = sch.split(x, [None, xb])
        row = knobs["stage"] == "row"
        sch.reorder(*((n, y, fo) if row else (n, fo, y)), xo, fi, xi)
        (cf, cx), reduction = S.tile_at(sch, conv, xo, (fb, xb))
        S.vector_tile(sch, reduction, cx, cf)
        wb = sch.cache_read(conv, 1, "global")
        sch.transform_layout(wb, ("write", 0), lambda o, *rest: (o // fb, *rest, o % fb))
        sch.annotate(wb, "meta_schedule.layout_rewrite_preproc", True)
        if fb > 1:
            sch.vectorize(fi)
        S._parallel_outer(sch, [n, y] if row else [n, fo, y])
        if reduction:
            sch.decompose_reduction(conv, reduction[0])
        if row:  # one band per parallel (image, output row): the fused transform
            sch.compute_at(pack, sch.get_loops(out)[0])
        else:
            S._parallel_outer(sch, sch.get_loops(pack))
        return sch.mod["main"]


TEMPLATE = PackedConv("im2win")


def integer_kernel(spec: ConvSpec, layout: str = "nhwc", knobs: dict | None = None,
                   lanes: int = 16, target: dict | None = None):  # fmt: skip
    """im2win for int8 x int8 -> int32, scheduled by the CPU template and built on its own:
    ``(x int8 [N,C,H,W], w int8 packed as ``relax_parts`` packs it, y int32 [N,O,Ho,Wo])``.
    In a model, ``conv_algos`` puts it in place of the integer convs of ``edgec.lower.qdq``
    (u8 x s8, zero-point padding folded in, requantization fused as the epilogue)."""
    import tvm
    from tvm import te

    dtype = spec.dtype if spec.integer else "int8"
    x = te.placeholder((spec.n, spec.cin, spec.h, spec.w), dtype, name="x")
    shape = (spec.cout, spec.kw, spec.kh, spec.cg) if layout == "nhwc" else (
        spec.cout, spec.cg, spec.kw, spec.kh)  # fmt: skip
    w = te.placeholder(shape, "int8", name="w")
    y = compute(x, w, spec, layout, out_dtype="int32")
    func = te.create_prim_func([x, w, y])
    info = TEMPLATE.match(func)
    func = TEMPLATE.apply(func, info, knobs or TEMPLATE.default(info, lanes))
    tgt = tvm.target.Target(target or {"kind": "llvm"})
    with tgt:
        return tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                              target=tgt)  # fmt: skip


# --------------------------------------------------------------------------------------------
# CUDA


def cuda_schedule(func, *, tile_o: int = 64, tile_x: int = 32, thread_o: int = 4,
                  thread_x: int = 4, tile_c: int = 4):  # fmt: skip
    """im2win as a CUDA kernel (NCHW window layout, fp32). The window tensor is built by its own
    kernel; the conv is an implicit GEMM: a thread block computes ``tile_o`` output channels x
    ``tile_x`` columns of one output row; per step of ``tile_c`` input channels, the window rows
    it needs (``tile_c x span x KH``, contiguous in the window tensor) and the filter rows are
    staged in shared memory by all threads, then each thread accumulates a ``thread_o`` x
    ``thread_x`` register tile."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    conv = sch.get_sblock("im2win_conv")
    pack = sch.get_sblock("im2win_pack")
    acc = sch.cache_write(conv, 0, "local")
    n, o, i, j, c, q, r = sch.get_loops(conv)
    bo, to, vo = sch.split(o, [None, tile_o // thread_o, thread_o])
    bx, tx, vx = sch.split(j, [None, tile_x // thread_x, thread_x])
    co, ci = sch.split(c, [None, tile_c])
    sch.reorder(n, i, bo, bx, to, tx, co, ci, q, r, vo, vx)
    sch.bind(sch.fuse(n, i, bo, bx), "blockIdx.x")
    sch.bind(to, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.reverse_compute_at(acc, tx)
    for index in (0, 1):  # window rows and filter rows of this channel step
        shared = sch.cache_read(conv, index, "shared")
        sch.compute_at(shared, co)
        fused = sch.fuse(*_loops_after(sch, shared, co))
        _, ty, tx_ = sch.split(fused, [None, tile_o // thread_o, tile_x // thread_x])
        sch.bind(ty, "threadIdx.y")  # a cooperative copy by all the block's threads
        sch.bind(tx_, "threadIdx.x")
    sch.decompose_reduction(conv, co)
    fused = sch.fuse(*sch.get_loops(pack))
    b, t = sch.split(fused, [None, 256])
    sch.bind(b, "blockIdx.x")
    sch.bind(t, "threadIdx.x")
    return sch.mod["main"]


def _loops_after(sch, block, loop) -> list:
    loops = sch.get_loops(block)
    index = [sch.get(lp).same_as(sch.get(loop)) for lp in loops].index(True)
    return loops[index + 1 :]


def cuda_ptx(spec: ConvSpec, arch: str = "sm_80", **tiles) -> str:
    """Compile the CUDA im2win kernel of ``spec`` (NCHW window) to PTX with nvcc: a check that
    needs no GPU. Returns the PTX text."""
    import os

    import tvm
    from tvm import te
    from tvm.support import nvcc

    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")  # nvrtc needs cuda-bindings

    x = te.placeholder((spec.n, spec.cin, spec.h, spec.w), "float32", name="x")
    w = te.placeholder((spec.cout, spec.cg, spec.kw, spec.kh), "float32", name="w")
    y = compute(x, w, spec, "nchw")
    tiles.setdefault("tile_x", next(t for t in (8, 16, 32) if t >= spec.wo or t == 32))
    func = cuda_schedule(te.create_prim_func([x, w, y]), **tiles)
    target = tvm.target.Target({"kind": "cuda", "arch": arch})
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "im2win_conv2d")})
    with target:
        lib = tvm.tirx.build(mod, target=target)
        source = lib.imports[0].inspect_source("cuda") if lib.imports else lib.inspect_source()
        return nvcc.compile_cuda(source, target_format="ptx", arch=arch, compiler="nvcc").decode()
