"""int8 schedule templates: uint8 x int8 -> int32 convolutions and matmuls on x86 dot-product
instructions, for the integer kernels of ``edgec.lower.qdq``.

The anchor computes ``acc[f] += u8(x[c]) * s8(w[f, c])`` (``qdq`` moves int8 activations to
uint8 with +128 and folds ``-zx * sum(w)`` into the bias, so every product is u8 x s8). The
conv template (``Int8Conv2d``; ``Int8Matmul`` does the same for ``x[.., M, K] @ w[K, N]``, whose
x is already K-contiguous) re-lays the operands out for a micro-kernel of 16 output channels x 4
input channels:

* weights packed at compile time to ``[F/16, C/4, KH, KW, 16*4]`` (``layout_rewrite_preproc``);
* the input (padding, zero point and the +128 shift inlined) copied per call to
  ``[N, C/4, H, W, 4]`` so the 4 channels of a pixel are one 32-bit word (``_repack_rows``:
  channel rows interleaved 16 pixels at a time); a thin input (C % 4, e.g. an RGB stem, its
  taps padded to a multiple of 4 by ``qdq``) is read as it is, NCHW and padded, each word
  4 consecutive taps of a row (weights ``[F/16, C, KH, KW/4, 16*4]``): ResNet's 3-channel
  7x7 stem runs 3 * 7 * 2 words per output instead of 7 * 7 (3 channels padded to 4);
* the accumulator tile as ``[.., 16]`` (16 int32 lanes), ``xb`` output columns kept in registers;
  the requantization epilogue reads the tile and writes the NCHW output row-wise (``epi="x"``,
  contiguous stores) or channel-wise (strided stores);
* threads split the output rows (``par="y"``: each thread repacks the input rows its own conv
  rows read, and writes the output rows the next layer's thread reads; 3-5 % faster on the
  large early layers) or the output channel blocks (``par="f"``: each thread reads half of the
  weights; for the small late layers, whose weights outweigh their input).

The 16x4 step is one instruction, written as ``T.call_llvm_pure_intrin`` into the block body
(``tensorize`` crashes in TVM 0.27): the update block over (16 channels x 4) is blockized and its
body replaced by the intrinsic on vector loads taken from the block's own read/write regions.

* ``vnni`` (AVX512-VNNI): ``vpdpbusd`` zmm: 16 x (4 u8 x s8 products summed) into int32, exact.
* ``avx2``: no VNNI, so ``vpmaddubsw`` would be next, but it saturates int16 (255 * 127 * 2 >
  32767), so this path widens both operands to int16 (u8 zero-extended, s8 sign-extended) and uses
  ``vpmaddwd`` (int16 pairs -> int32, exact) twice per 16x4 step: exact for all 8-bit weights.

``Int8Depthwise`` (VNNI only) computes depthwise convs on ``vpdpbusd`` straight from the NCHW
rows: 4 consecutive pixels of a row are the taps of one output (see its docstring).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

Knobs = dict


def _sched():
    """edgec.lower.schedules (imported lazily: its TEMPLATES include this module's)."""
    from edgec.lower import schedules

    return schedules


def Decline(message: str) -> Exception:  # noqa: N802 - schedules.Decline, raised as such
    return _sched().Decline(message)


# micro-kernel per instruction set: output channels (int32 lanes) x input channels per step
# ("vnni8": vpdpbusd on ymm, AVX512-VL, for F a multiple of 8 but not of 16)
MICRO = {"vnni": (16, 4), "vnni8": (8, 4), "avx2": (8, 2)}
INTRINSIC = {
    "vnni": "llvm.x86.avx512.vpdpbusd.512",
    "vnni8": "llvm.x86.avx512.vpdpbusd.256",
    "avx2": "llvm.x86.avx2.pmadd.wd",
}


def _isa() -> str | None:
    """The dot-product instruction set of the current target (inside ``with target``)."""
    import tvm
    import tvm_ffi

    tgt = tvm.target.Target.current(allow_none=True)
    if (
        tgt is None
        or str(tgt.kind.name) != "llvm"
        or "x86_64" not in str(tgt.attrs.get("mtriple", ""))
    ):
        return None
    has = tvm_ffi.get_global_func("target.llvm_cpu_has_feature")
    if has("avx512vnni", tgt) and has("avx512bw", tgt) and has("avx512vl", tgt):
        return "vnni"
    if has("avx2", tgt):
        return "avx2"
    return None


class Int8Conv2d:
    """Dense (groups = 1) u8 x s8 -> s32 NCHW convolutions with C % 4 == 0 and F % 16 == 0."""

    name = "int8_conv2d"

    def match(self, func: tirx.PrimFunc) -> dict:
        info = _sched().Conv2d().match(func)
        sch = s_tir.Schedule(func)
        conv = _sched()._blocks(sch)[info["anchor"]]
        data, weight = conv["reads"]
        if (str(data.dtype), str(weight.dtype), str(conv["writes"].dtype)) != (
            "uint8", "int8", "int32",
        ):  # fmt: skip
            raise Decline("not a u8 x s8 -> s32 convolution")
        channels = int(data.shape[1])
        if info["cin_per_group"] != channels:
            raise Decline("grouped convolution")
        isa = _isa()
        if isa is None:
            raise Decline("no x86 AVX2/VNNI target")
        if isa == "vnni" and info["f"] % 16:
            isa = "vnni8"
        fb, cb = MICRO[isa]
        taps = bool(channels % cb) and info["kw"] % cb == 0  # words of cb taps of a row
        if (channels % cb and not taps) or info["f"] % fb:
            raise Decline(f"C={channels} not a multiple of {cb} or F={info['f']} of {fb}")
        info.update(isa=isa, cin=channels, taps=taps)
        return info

    def space(self, info: dict, lanes: int) -> list[Knobs]:
        fb = MICRO[info["isa"]][0]
        w = info["w"]
        xbs = sorted({x for x in (4, 7, 8, 14, 16, w) if x <= min(w, 16) and w % x == 0})
        fks = [k for k in (1, 2) if info["f"] % (k * fb) == 0]
        default = self.default(info, lanes)
        par = {"par": default["par"]}
        out = [default, {**default, "par": "f" if par["par"] == "y" else "y"}] + [
            {"xb": xb, "fk": fk, **epi, **par}
            for fk in fks for xb in xbs for epi in ({}, {"epi": "x"})
        ]  # fmt: skip
        return list({schedules_key(k): k for k in out}.values())

    def default(self, info: dict, lanes: int) -> Knobs:
        xb = next((x for x in range(16, 3, -1) if info["w"] % x == 0), 8)
        # threads split output rows where the input outweighs the weights (each thread then
        # repacks and reads its own rows), output channel blocks otherwise (its own weights)
        rows = 16 * info["h"] * info["w"] >= info["f"] * info["kh"] * info["kw"]
        return {"xb": min(xb, info["w"]), "fk": 1, "epi": "x", "par": "y" if rows else "f"}

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: Knobs) -> tirx.PrimFunc:
        if info["weight_param"] not in info.get("constants", ()):
            raise Decline("the weight is not a constant (cannot be packed)")
        xb, fk = knobs["xb"], knobs.get("fk", 1)  # fk: micro-kernel channel blocks per tile
        FB, CB = MICRO[info["isa"]]  # noqa: N806
        func = func.with_attr("layout_free_buffers", [info["weight_param"]])
        sch = s_tir.Schedule(func)
        blocks = _sched()._blocks(sch)
        conv = blocks[info["anchor"]]["block"]
        taps = info.get("taps", False)  # words of CB taps of an input row (thin stems)
        xcache = None
        if not taps:  # input: padding and shifts inlined into one copy, channel groups of 4
            xcache = sch.cache_read(conv, 0, "global")
            for b in blocks[: info["anchor"]]:
                sch.compute_inline(b["block"])
            sch.transform_layout(xcache, ("write", 0),
                                 lambda n, c, h, w: (n, c // CB, h, w, c % CB))  # fmt: skip
        else:  # the padded input read as it is: only plain copies (topi's pad_temp) inlined
            for b in blocks[: info["anchor"]]:
                value = sch.get(b["block"]).body.value
                if isinstance(value, tirx.Select) or _has_call(value, "prim.if_then_else"):
                    raise Decline("taps: padding inside the kernel (pad the input first)")
                sch.compute_inline(b["block"])
        # weights: [F/16, C/4, KH, KW, 16 * 4] (taps: [F/16, C, KH, KW/4, 16 * 4]), packed at
        # compile time
        wcache = sch.cache_read(conv, 1, "global")
        sch.transform_layout(
            wcache, ("write", 0),
            (lambda f, c, u, v: (f // FB, c, u, v // CB, (f % FB) * CB + v % CB)) if taps else
            (lambda f, c, u, v: (f // FB, c // CB, u, v, (f % FB) * CB + c % CB)),
        )  # fmt: skip
        sch.annotate(wcache, "meta_schedule.layout_rewrite_preproc", True)
        if info["anchor"] == len(blocks) - 1:
            out = sch.cache_write(conv, 0, "global")
        else:
            out = _sched()._inline_epilogue(sch, blocks, info["anchor"])["block"]
        sch.transform_layout(conv, ("write", 0),
                             lambda n, f, h, w: (n, f // FB, h, w, f % FB))  # fmt: skip
        if info["f"] % (fk * FB):
            raise Decline(f"F={info['f']} not a multiple of {fk * FB}")
        n, f, y, x = sch.get_loops(out)
        fo, fi = sch.split(f, [None, fk * FB])
        xo, xi = sch.split(x, [None, xb])
        rows_outer = knobs.get("par") == "y"  # threads split rows, not channel blocks
        sch.reorder(n, y, fo, xo, xi, fi) if rows_outer else sch.reorder(n, fo, y, xo, xi, fi)
        fvec = sch.split(fi, [fk, FB])[1] if fk > 1 else fi
        if knobs.get("epi") == "x":  # epilogue vectorized along the row: contiguous stores
            sch.reorder(fvec, xi)
            fvec = xi
        (cf, cx), reduction = _sched().tile_at(sch, conv, xo, (fk * FB, xb))
        last = -1 if taps else 0  # the loop split into words: kw (taps) or c
        if not reduction or int(sch.get(reduction[last]).extent) != info["kw" if taps else "cin"]:
            raise Decline("unexpected reduction loops")
        cfo, cfi = sch.split(cf, [fk, FB]) if fk > 1 else (None, cf)
        unrolled = [lp for lp in (cx, cfo) if lp is not None]
        if taps:  # (c, kh, kw/4) steps over words of 4 taps (unit c, kh loops are gone)
            wo, wi = sch.split(reduction[-1], [None, CB])
            first = reduction[0] if len(reduction) > 1 else wo
            sch.reorder(*reduction[:-1], wo, *unrolled, cfi, wi)
        else:
            first, ci = sch.split(reduction[0], [None, CB])
            sch.reorder(first, *reduction[1:], *unrolled, cfi, ci)
        sch.vectorize(fvec)
        _sched()._parallel_outer(sch, [n, y, fo] if rows_outer else [n, fo, y])
        if xcache is not None and not _repack_rows(sch, xcache, CB, rows_outer):
            _sched()._parallel_outer(sch, sch.get_loops(xcache)[:-1])
        init = sch.decompose_reduction(conv, first)
        update = sch.blockize(cfi)
        for lp in (cx, cfo):
            if lp is not None:
                sch.unroll(lp)
        sch.vectorize(sch.get_loops(init)[-1])
        _replace_body(sch, update, info["isa"])
        return sch.mod["main"]


class Int8Matmul:
    """u8 x s8 -> s32 matmuls ``x[.., M, K] @ w[K, N]`` with a constant 2-D weight (``qdq``'s
    Linear/Gemm/MatMul layers), K % 4 == 0 and N % 8 == 0 (AVX2: K % 2 == 0).

    The weight is packed at compile time to ``[N/FB, K/CB, FB*CB]``; x is read in place (its CB
    consecutive k bytes are one 32-bit word to broadcast), or copied once when M is padded to a
    multiple of the tile's rows or int8 activations are shifted to uint8. A tile of ``mb`` rows x
    ``fk * FB`` columns is accumulated in registers over k in steps of CB (one dot-product
    instruction per row and FB columns); the requantization epilogue is computed per tile,
    vectorized along n. Knobs: ``mb`` (rows per tile), ``fk`` (micro-kernel column blocks per
    tile), ``order`` (``"nm"``: a column panel of the weight stays in cache while the row tiles
    go by; ``"mn"``: a row band of x stays while the column tiles go by).
    """

    name = "int8_matmul"
    REGISTERS = {"vnni": 24, "vnni8": 24, "avx2": 12}  # accumulator vectors per tile at most

    def match(self, func: tirx.PrimFunc) -> dict:
        info = _sched().Matmul().match(func)
        sch = s_tir.Schedule(func)
        mm = _sched()._blocks(sch)[info["anchor"]]
        x, w = mm["reads"]
        if (str(x.dtype), str(w.dtype), str(mm["writes"].dtype)) != ("uint8", "int8", "int32"):
            raise Decline("not a u8 x s8 -> s32 matmul")
        stmt = sch.get(mm["block"])
        k_var = stmt.iter_vars[-1].var
        x_last = stmt.reads[0].region[-1].min
        nbatch = len(info["batch"])
        batched = len(w.shape) == 2 + nbatch and [int(d) for d in w.shape[:-2]] == [
            int(d) for d in info["batch"]
        ]  # an activation (attention): one [K, N] per batch index, packed per call
        if info["transposed"] or info["b_param"] is None or not (len(w.shape) == 2 or batched):
            raise Decline("the weight is not a [.., K, N] function parameter")
        if not (isinstance(x_last, tirx.Var) and x_last.same_as(k_var)):
            raise Decline("the activation is not K-contiguous")
        isa = _isa()
        if isa is None:
            raise Decline("no x86 AVX2/VNNI target")
        if isa == "vnni" and info["n"] % 16:
            isa = "vnni8"
        info.update(isa=isa)
        return info

    def space(self, info: dict, lanes: int) -> list[Knobs]:
        fb = MICRO[info["isa"]][0]
        regs = self.REGISTERS[info["isa"]]
        m = info["m"]
        mbs = sorted({min(m, x) for x in (1, 2, 4, 6, 8, 12)})
        fks = [k for k in self._fks(m) if info["n"] % (k * fb) == 0 or self._activation_b(info)]
        out = [self.default(info, lanes)] + [
            {"mb": mb, "fk": fk, "order": order}
            for fk in fks for mb in mbs if mb * fk <= regs and (mb > 1 or m == 1)
            for order in ("nm", "mn")
        ]  # fmt: skip
        return list({schedules_key(k): k for k in out}.values())

    @staticmethod
    def _activation_b(info: dict) -> bool:
        """B is an activation (packed per call), so N and K may be padded to whole tiles."""
        return info["b_param"] not in info.get("constants", ())

    @staticmethod
    def _fks(m: int) -> tuple[int, ...]:
        # one row (GEMV): the column blocks are the only independent accumulator chains
        return (1, 2, 3, 4, 5, 6, 8) if m == 1 else (1, 2, 4)

    def default(self, info: dict, lanes: int) -> Knobs:
        # measured on Zen 4 (DeiT-tiny's Linear layers): vpdpbusd 6 x 2 zmm accumulators;
        # vpmaddwd (16 ymm registers) 2 rows x 4 column blocks, or 6 x 2; one row: as many
        # column blocks as divide N (up to 8), for independent dependency chains
        fb = MICRO[info["isa"]][0]
        prefer = (4, 2, 1) if info["isa"] == "avx2" else (2, 1)
        if info["m"] == 1:
            prefer = (8, 6, 5, 4, 3, 2, 1)
        n = info["n"]
        fk = next((k for k in prefer if n % (k * fb) == 0), None)
        if fk is None:  # an activation B, padded: the least padding, then the wider tile
            fk = min(prefer, key=lambda k: (-(-n // (k * fb)) * k * fb, -k))
        mb = {4: 2, 2: 6}.get(fk, 8) if info["isa"] == "avx2" else 6
        # a weight panel (K x fk*FB bytes) over half of L1: keep the rows of x instead
        order = "mn" if info["k"] * fk * fb > 16384 else "nm"
        return {"mb": min(mb, info["m"]), "fk": fk, "order": order}

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: Knobs) -> tirx.PrimFunc:
        mb, fk, order = knobs["mb"], knobs["fk"], knobs.get("order", "nm")
        FB, CB = MICRO[info["isa"]]  # noqa: N806
        constant = not self._activation_b(info)
        pad_n, pad_k = info["n"] % (fk * FB), info["k"] % CB
        if constant and (pad_n or pad_k):
            raise Decline(f"K={info['k']} not a multiple of {CB} or N={info['n']} of {fk * FB}")
        if constant:
            func = func.with_attr("layout_free_buffers", [info["b_param"]])
        sch = s_tir.Schedule(func)
        blocks = _sched()._blocks(sch)
        anchor = info["anchor"]
        mm = blocks[anchor]["block"]
        if anchor == len(blocks) - 1:  # no epilogue: accumulate in a buffer, then copy
            out = sch.cache_write(mm, 0, "global")
        else:
            out = _sched()._inline_epilogue(sch, blocks, anchor)["block"]
        nbatch = len(info["batch"])
        # x: read in place, or one copy (M padded to a multiple of mb, K to CB: zeros; the
        # int8 -> uint8 shift inlined); an activation B: N and K padded with zeros (exact: the
        # products of padded K are 0, padded columns are dropped)
        xcopy = wcache = None
        if info["m"] % mb or pad_n or pad_k:
            tile = [mb if info["m"] % mb else 1, fk * FB if pad_n else 1, CB if pad_k else 1]
            sch.pad_einsum(mm, [1] * nbatch + tile)
            copy_out = sch.get_consumers(mm)[0]  # the padded accumulator -> the unpadded one
            if not sch.get(copy_out).same_as(sch.get(out)):
                sch.compute_inline(copy_out)
            for producer in sch.get_producers(mm):
                dtype = str(sch.get(producer).writes[0].source.dtype)
                if dtype == "uint8":
                    xcopy = producer
                else:
                    wcache = producer
        xcopy, wcache = operand_copies(sch, mm, blocks[:anchor], xcopy, wcache)
        # B: [.., N/FB, K/CB, FB * CB]: packed at compile time (a constant weight), else per call
        sch.transform_layout(
            wcache, ("write", 0),
            lambda *ix: (*ix[:-2], ix[-1] // FB, ix[-2] // CB, (ix[-1] % FB) * CB + ix[-2] % CB),
        )  # fmt: skip
        if constant:
            sch.annotate(wcache, "meta_schedule.layout_rewrite_preproc", True)
        else:
            _sched()._parallel_outer(sch, sch.get_loops(wcache)[:-1])
        *batch, i, j, k = sch.get_loops(mm)
        io, ii = sch.split(i, [None, mb])
        jo, jm, jf = sch.split(j, [None, fk, FB])
        ko, ki = sch.split(k, [None, CB])
        tiles = [jo, io] if order == "nm" else [io, jo]
        sch.reorder(*batch, *tiles, ko, ii, jm, jf, ki)
        # the epilogue per tile, vectorized along n (contiguous stores)
        if pad_n:  # per tile, the last one's columns would need a predicate (scalar code):
            # the epilogue runs after the matmul on whole rows, its 16-column runs vectorized
            # and the N % 16 tail apart (loop_partition)
            *rows, cols = sch.get_loops(out)
            full = info["n"] // 16 * 16
            if full:
                head = sch.loop_partition(cols, [full, None])[0]
                sch.vectorize(sch.split(head, [None, 16])[1])
            _sched()._parallel_outer(sch, rows)
        else:
            sch.reverse_compute_at(out, tiles[-1])
            epi = _sched()._loops_below(sch, out, tiles[-1])
            sch.vectorize(epi[-1])
        _sched()._parallel_outer(sch, [*batch, *tiles])
        update = finish_matmul(sch, mm, xcopy, ko, jf, (ii, jm), (64, 32, 16, 8, 4, 2))
        _replace_body(sch, update, info["isa"])
        return sch.mod["main"]


def operand_copies(sch: s_tir.Schedule, mm, producers: list[dict], xcopy, wcache) -> tuple:
    """The matmul's x copy (kept from padding, else one when it has producers to inline) and
    B's copy to re-lay-out (kept, else a cache read); the producers inlined into them."""
    if xcopy is None and producers:
        xcopy = sch.cache_read(mm, 0, "global")
    for b in producers:
        sch.compute_inline(b["block"])
    if wcache is None:
        wcache = sch.cache_read(mm, 1, "global")
    return xcopy, wcache


def finish_matmul(sch: s_tir.Schedule, mm, xcopy, ko, jf, unrolled, widths) -> object:
    """The end of the dot-product matmul schedules (here and ``int8_arm``): x's copy, if any,
    with rows in parallel and vectors of the first of ``widths`` bytes dividing K; the
    accumulator's init split off at ``ko`` and vectorized; the micro-kernel's update blockized
    at ``jf`` (returned: its body becomes the instruction) and the tile loops unrolled."""
    if xcopy is not None:
        *rows, kx = sch.get_loops(xcopy)
        _sched()._parallel_outer(sch, rows)
        width = next((w for w in widths if int(sch.get(kx).extent) % w == 0), 1)
        if width > 1:
            sch.vectorize(sch.split(kx, [None, width])[1])
    init = sch.decompose_reduction(mm, ko)
    update = sch.blockize(jf)
    for lp in unrolled:
        sch.unroll(lp)
    sch.vectorize(sch.get_loops(init)[-1])
    return update


def _has_call(expr, name: str) -> bool:
    if isinstance(expr, tvm.ir.Call) and expr.op.name == name:
        return True
    fields = [getattr(expr, f) for f in ("a", "b", "value", "condition", "true_value",
                                          "false_value") if hasattr(expr, f)]  # fmt: skip
    fields += list(getattr(expr, "args", []) or [])
    return any(isinstance(f, tvm.ir.Expr) and _has_call(f, name) for f in fields)


def _repack_rows(sch: s_tir.Schedule, xcache, cb: int, rows_outer: bool = False) -> bool:
    """The input copy ``[N, C, H, W] -> [N, C/cb, H, W, cb]`` as vector code: per (n, c/cb, h)
    row, ``cb`` channel rows loaded 16 pixels at a time (the producers, e.g. the int8 -> uint8
    shift, evaluated on them) and interleaved with ``Shuffle``; a padded input's row is first
    filled with the padding value (the zero point) and rows outside the input stay so. The
    plain copy block stores byte by byte, which cost more than the dot products of thin 1x1
    convs. Returns whether it applied (not to channel padding, e.g. a 3-channel stem)."""
    stmt = sch.get(xcache)
    buf = stmt.writes[0].source
    if len(buf.shape) != 5 or len(stmt.iter_vars) != 4:
        return False
    ivars = [iv.var for iv in stmt.iter_vars]
    batch, blocks_c, height, width, _ = (int(d) for d in buf.shape)
    try:
        pad = _padding((ivars, stmt.body.value))
    except Exception:  # noqa: BLE001 - a padding it cannot read: the plain copy does it
        return False
    fill, top, left, rows_in, cols_in, inner = pad or (0, 0, 0, height, width, stmt.body.value)
    inputs = [ld.source for ld in _loads(inner) if len(ld.source.shape) == 4]
    if _has_call(inner, "prim.if_then_else") or any(
        int(x.shape[1]) != blocks_c * cb for x in inputs
    ):
        return False
    lanes = min(16, cols_in)
    outer = sch.blockize(sch.get_loops(xcache)[0])
    ostmt = sch.get(outer)
    row, k, ci, lane, col = (tirx.Var(v, "int64") for v in ("row", "k", "ci", "lane", "col"))
    n = tirx.FloorDiv(row, _i64(blocks_c * height))
    c4 = tirx.FloorMod(tirx.FloorDiv(row, _i64(height)), _i64(blocks_c))
    h = tirx.FloorMod(row, _i64(height))
    if rows_outer:  # the threads' share of rows is the one their conv rows read
        h = tirx.FloorMod(tirx.FloorDiv(row, _i64(blocks_c)), _i64(height))
        c4 = tirx.FloorMod(row, _i64(blocks_c))
    w0 = tirx.Min(k * _i64(lanes), _i64(cols_in - lanes)) + _i64(left)
    tmp = tirx.decl_buffer((cb, lanes), str(buf.dtype), "repack_rows")
    at = (n, c4 * _i64(cb) + ci, h, w0 + lane)
    binds = [tirx.Bind(v, e) for v, e in zip(ivars, at, strict=True)]
    load = _for(ci, cb, _for(lane, lanes, tirx.SeqStmt(
        [*binds, tirx.BufferStore(tmp, inner, [ci, lane])]), tirx.ForKind.VECTORIZED),
        tirx.ForKind.UNROLLED)  # fmt: skip
    parts = [tirx.BufferLoad(tmp, [_i64(j), tirx.Ramp(_i64(0), _i64(1), lanes)]) for j in range(cb)]
    group = tirx.Ramp(_i64(0), _i64(1), cb)  # the cb channels of one pixel
    stores = [
        tirx.BufferStore(buf, tirx.Shuffle(parts, [tirx.IntImm("int32", j * lanes + i)
                                                   for j in range(cb)]),
                         [n, c4, h, w0 + _i64(i), group])
        for i in range(lanes)
    ]  # fmt: skip
    body = _for(k, -(-cols_in // lanes), tirx.SeqStmt([tirx.AllocBuffer(tmp), load, *stores]))
    if pad is not None:
        blank = tirx.BufferStore(buf, tirx.Broadcast(tirx.IntImm(str(buf.dtype), fill), cb),
                                 [n, c4, h, col, group])  # fmt: skip
        inside = tirx.all(h >= _i64(top), h < _i64(top + rows_in))
        body = tirx.SeqStmt([_for(col, width, blank), tirx.IfThenElse(inside, body, None)])
    body = _for(row, batch * blocks_c * height, body, tirx.ForKind.PARALLEL)
    iters = [tirx.IterVar(v.dom, v.var, 0) for v in ostmt.iter_vars]
    new = s_tir.SBlock(iters, ostmt.reads, ostmt.writes, ostmt.name_hint, body)
    sch.state.replace(sch.get_sref(outer), new, {})
    return True


def schedules_key(knobs: Knobs) -> tuple:
    return tuple(sorted(knobs.items()))


def _region(stmt, buffer):
    for r in list(stmt.reads) + list(stmt.writes):
        if r.source.same_as(buffer):
            return r.region
    raise Decline(f"no region of {buffer.name}")


def _vector_index(region, lanes: int) -> list:
    return [r.min for r in region[:-1]] + [tirx.Ramp(region[-1].min, 1, lanes)]


def _replace_body(sch: s_tir.Schedule, block, isa: str) -> None:
    """The blockized FB x CB update as one dot-product step on vectors."""
    FB, CB = MICRO[isa]  # noqa: N806
    stmt = sch.get(block)
    acc_buf = stmt.writes[0].source
    x_buf = next(r.source for r in stmt.reads if str(r.source.dtype) == "uint8")
    w_buf = next(r.source for r in stmt.reads if str(r.source.dtype) == "int8")
    acc_idx = _vector_index(_region(stmt, acc_buf), FB)
    x = tirx.BufferLoad(x_buf, _vector_index(_region(stmt, x_buf), CB))  # uint8 x CB
    w = tirx.BufferLoad(w_buf, _vector_index(_region(stmt, w_buf), FB * CB))  # int8 x FB*CB
    acc = tirx.BufferLoad(acc_buf, acc_idx)
    if isa.startswith("vnni"):
        # LLVM 22's signature: (<16 x i32> acc, <64 x i8> u8 data, <64 x i8> s8 data) (ymm: 8, 32)
        a = tirx.reinterpret(f"int8x{FB * CB}", tirx.Broadcast(tirx.reinterpret("int32", x), FB))
        value = tirx.call_llvm_pure_intrin(f"int32x{FB}", INTRINSIC[isa], acc, a, w)
    else:  # avx2: u8 pairs and s8 weights widened to int16, vpmaddwd (exact, no saturation)
        pair = tirx.reinterpret("int32", tirx.Cast(f"int16x{CB}", x))
        a = tirx.reinterpret(f"int16x{FB * CB}", tirx.Broadcast(pair, FB))
        b = tirx.Cast(f"int16x{FB * CB}", w)
        value = acc + tirx.call_llvm_pure_intrin(f"int32x{FB}", INTRINSIC[isa], a, b)
    body = tirx.BufferStore(acc_buf, value, acc_idx)
    new = s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, body, stmt.init,
                       stmt.alloc_buffers, stmt.match_buffers, stmt.annotations)  # fmt: skip
    sch.state.replace(sch.get_sref(block), new, {stmt: new})


class Int8Depthwise:
    """Depthwise u8 x s8 -> s32 NCHW convolutions (``groups = C = F``, dilation 1, horizontal
    stride 1, 2 or 4) on ``vpdpbusd`` without any repack of the input.

    A dword of the input row holds 4 consecutive pixels, the taps of one output for a kernel
    row up to 4 wide (the weight word zero beyond ``KW``; 5-8 wide: two words). A vector load of
    ``4 * L`` bytes at column ``x0 * S + S * p`` puts, in lane ``k``, the taps of output
    ``x0 + P * k + p`` (``P = 4 / S`` phases): one ``vpdpbusd`` accumulates a kernel row for
    ``L`` outputs, and ``P`` loads cover ``P * L`` consecutive outputs (the tile). The ``P``
    accumulators are interleaved back to column order (``Shuffle``) into the row's int32
    accumulator plane, and the requantization epilogue runs over it, vectorized along rows. Per
    channel the input plane is first copied into a buffer wide enough for every load (the
    padding, i.e. the zero point, and the producers such as the int8 -> uint8 shift inlined);
    the last tile of a row overlaps the previous one instead of running past it. Knobs: ``L``
    (vector lanes: 4, 8, 16 = xmm, ymm, zmm) and ``xt`` (tiles in flight: more independent
    accumulator chains).
    """

    name = "int8_depthwise"

    def match(self, func: tirx.PrimFunc) -> dict:
        from tvm.sym import detect_linear_equation

        sched = _sched()
        try:
            info = sched.Conv2d().match(func)
        except sched.Decline as e:
            raise sched.NotMine(str(e)) from e
        sch = s_tir.Schedule(func)
        conv = sched._blocks(sch)[info["anchor"]]
        data, weight = conv["reads"]
        if (str(data.dtype), str(weight.dtype), str(conv["writes"].dtype)) != (
            "uint8", "int8", "int32",
        ) or not info["depthwise"]:  # fmt: skip
            raise sched.NotMine("not a depthwise u8 x s8 -> s32 convolution")
        if int(data.shape[1]) != info["f"]:
            raise Decline("a channel multiplier (F != C)")
        stmt = sch.get(conv["block"])
        load = next(ld for ld in _loads(stmt.body.value) if ld.source.same_as(data))
        iv = [v.var for v in stmt.iter_vars]  # n, o, i, j, [rc,] ry, rx
        ry, rx = iv[-2], iv[-1]
        rows = [int(c) for c in detect_linear_equation(load.indices[2], [iv[2], ry])]
        cols = [int(c) for c in detect_linear_equation(load.indices[3], [iv[3], rx])]
        if len(rows) != 3 or len(cols) != 3 or rows[1:] != [1, 0] or cols[1:] != [1, 0]:
            raise Decline("dilation or offset reads")
        if cols[0] not in (1, 2, 4):
            raise Decline(f"horizontal stride {cols[0]} (1, 2 or 4)")
        if _isa() != "vnni":
            raise Decline("no AVX512-VNNI target")
        info.update(sh=rows[0], sw=cols[0], hd=int(data.shape[2]), wd=int(data.shape[3]))
        return info

    def space(self, info: dict, lanes: int) -> list[Knobs]:
        out = [self.default(info, lanes)] + [
            {"lanes": ln, "xt": xt} for ln in (4, 8, 16) for xt in (1, 2)
            if ln == 4 or (4 // info["sw"]) * ln <= 2 * info["w"]
        ]  # fmt: skip
        return list({schedules_key(k): k for k in out}.values())

    def default(self, info: dict, lanes: int) -> Knobs:
        # measured on Zen 4 (MobileNetV2, bench/int8_kernels.py --space): ymm tiles, also when
        # the row is a little narrower than one; tiles in flight made no difference
        phases, w = 4 // info["sw"], info["w"]
        return {"lanes": 8 if phases * 8 <= 2 * w else 4, "xt": 1}

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: Knobs) -> tirx.PrimFunc:
        sched = _sched()
        sch = s_tir.Schedule(func)
        blocks = sched._blocks(sch)
        anchor = info["anchor"]
        source = None  # the input at padded coordinates: (iter vars, value) of the producer
        if anchor:
            for b in blocks[: anchor - 1]:
                sch.compute_inline(b["block"])
            last = sch.get(blocks[anchor - 1]["block"])
            source = ([v.var for v in last.iter_vars], last.body.value)
            sch.compute_inline(blocks[anchor - 1]["block"])
        if anchor == len(blocks) - 1:
            out = sch.cache_write(blocks[anchor]["block"], 0, "global")
        else:
            out = sched._inline_epilogue(sch, blocks, anchor)["block"]
        conv = sch.get_sblock(blocks[anchor]["name"])
        n, f, y, xo = sch.get_loops(out)
        sch.compute_at(conv, f)
        outer = sch.blockize(sched._loops_below(sch, conv, f)[0])  # per (n, c): a plane
        stmt = sch.get(outer)
        acc = stmt.writes[0].source
        w = func.params[info["weight_param"]]
        x = next(r.source for r in stmt.reads if not r.source.same_as(w))
        # (n, c) and extent-1 leftovers of y, x and the reduction (made spatial: no init)
        if len(stmt.iter_vars) < 2 or any(int(v.dom.extent) != 1 for v in stmt.iter_vars[2:]):
            raise Decline("unexpected iterators of the plane block")
        iters = [tirx.IterVar(v.dom, v.var, 0) for v in stmt.iter_vars]
        vn, vc = (v.var for v in iters[:2])
        whole = [tvm.ir.Range.from_min_extent(0, int(d)) for d in x.shape[2:]]
        reads = [tirx.BufferRegion(x, [tvm.ir.Range.from_min_extent(vn, 1),
                                       tvm.ir.Range.from_min_extent(vc, 1), *whole]),
                 tirx.BufferRegion(w, [tvm.ir.Range.from_min_extent(vc, 1)] + [
                     tvm.ir.Range.from_min_extent(0, int(d)) for d in w.shape[1:]])]  # fmt: skip
        body, rows = _dw_plane(info, knobs, vn, vc, x, w, acc, source)
        new = s_tir.SBlock(iters, reads, stmt.writes, "dw_plane", body)
        sch.state.replace(sch.get_sref(outer), new, {})
        root = sch.get(sch.get_sblock("root"))
        new_root = s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint,
                                root.body, root.init, [*root.alloc_buffers, rows],
                                root.match_buffers, root.annotations)  # fmt: skip
        sch.state.replace(sch.get_sref(sch.get_sblock("root")), new_root, {root: new_root})
        width = next((v for v in (64, 32, 16, 8) if info["w"] % v == 0), None)
        if info["w"] <= 64:
            sch.vectorize(xo)
        elif width:
            sch.vectorize(sch.split(xo, [None, width])[1])
        sched._parallel_outer(sch, [n, f, y])
        return sch.mod["main"]


def _loads(expr) -> list:
    """The BufferLoads in ``expr`` (binary ops, casts, calls, selects)."""
    if isinstance(expr, tvm.ir.expr.TensorLoad):
        return [expr]
    out = []
    for field in ("a", "b", "value", "condition", "true_value", "false_value"):
        if hasattr(expr, field) and isinstance(getattr(expr, field), tvm.ir.Expr):
            out += _loads(getattr(expr, field))
    for arg in getattr(expr, "args", []) or []:
        if isinstance(arg, tvm.ir.Expr):
            out += _loads(arg)
    return out


def _i64(v) -> tirx.IntImm:
    return tirx.IntImm("int64", int(v))


def _for(var, extent: int, body, kind=tirx.ForKind.SERIAL):
    return tirx.For(var, _i64(0), _i64(extent), kind, body)


def _padding(source) -> tuple:
    """(value, top, left, height, width, unpadded value) of the input producer's
    ``if_then_else(inside, value, pad)``; None without padding."""
    from tvm.sym import detect_linear_equation

    ivars, value = source
    if not (isinstance(value, tvm.ir.Call) and value.op.name == "prim.if_then_else"):
        return None
    _, inner, other = value.args
    loads = _loads(inner)
    if not isinstance(other, tirx.IntImm) or not loads:
        raise Decline("padding with a non-constant value, or of no input")
    top = -int(detect_linear_equation(loads[0].indices[2], [ivars[2]])[1])
    left = -int(detect_linear_equation(loads[0].indices[3], [ivars[3]])[1])
    shape = loads[0].source.shape
    return int(other.value), top, left, int(shape[2]), int(shape[3]), inner


def _dw_plane(info: dict, knobs: Knobs, n, c, x, w, acc, source):
    """The statement computing one output channel (``acc[n, c, :, :]``) of a depthwise conv,
    and the buffer of padded input planes it uses (see ``Int8Depthwise``)."""
    from tvm.sym import Analyzer

    lanes, xt = knobs["lanes"], knobs.get("xt", 1)
    sh, sw, kh, kw = info["sh"], info["sw"], info["kh"], info["kw"]
    wo, hd, wd = info["w"], info["hd"], info["wd"]
    phases, nq = 4 // sw, -(-kw // 4)  # nq: words per kernel row
    tile = phases * lanes
    x0max = max(wo - tile, 0)  # the last tile's first column
    width = max(x0max * sw + sw * (phases - 1) + 4 * (nq - 1) + 4 * lanes, wd)
    width = -(-width // 16) * 16
    # one padded plane per (n, c), allocated once per call and copied whole before the loads
    # (loads right after overlapping stores stall store forwarding; a small buffer per row
    # would be promoted to registers by LLVM, its unaligned loads turned into byte shuffles)
    planes = tirx.decl_buffer((info["n"] * info["f"], hd, width), "uint8", "dw_planes")
    slot = n * _i64(info["f"]) + c
    fill, top, left, height, inner = 0, 0, 0, hd, None
    if source is not None:
        inner = source[1]
        pad = _padding(source)
        if pad is not None:
            fill, top, left, height, wd, inner = pad
    # the plane: the padding value, then the input rows in 16-byte pieces (a row-long vector
    # of an odd length lowers to byte shuffles; the last piece overlaps the one before)
    r, kf, xf, kc, xx = (tirx.Var(name, "int64") for name in ("r", "kf", "xf", "kc", "xx"))
    fill_row = _for(kf, width // 16, _for(xf, 16, tirx.BufferStore(
        planes, tirx.IntImm("uint8", fill), [slot, r, kf * _i64(16) + xf]),
        tirx.ForKind.VECTORIZED))  # fmt: skip
    piece = min(16, wd)
    col = tirx.Min(kc * _i64(piece), _i64(wd - piece)) + xx
    if inner is None:
        copy = tirx.BufferStore(planes, tirx.BufferLoad(x, [n, c, r, col]), [slot, r, col])
    else:  # the producer's value at padded (r, col + left), its iterators bound
        at = (n, c, r, col + _i64(left))
        binds = [tirx.Bind(v, e) for v, e in zip(source[0], at, strict=True)]
        copy = tirx.SeqStmt([*binds, tirx.BufferStore(planes, inner, [slot, r, at[3]])])
    copy = _for(kc, -(-wd // piece), _for(xx, piece, copy, tirx.ForKind.VECTORIZED))
    if height != hd:
        copy = tirx.IfThenElse(tirx.all(r >= _i64(top), r < _i64(top + height)), copy, None)
    stmts = [_for(r, hd, tirx.SeqStmt([fill_row, copy]))]
    # weight words: the taps of a kernel row, 4 per word (zero beyond KW), broadcast
    words = {}
    for u in range(kh):
        for q in range(nq):
            word = None
            for j in range(min(4, kw - 4 * q)):
                tap = tirx.Cast("int32", tirx.BufferLoad(w, [c, _i64(0), _i64(u), _i64(4 * q + j)]))
                part = tirx.BitwiseAnd(tap, tirx.IntImm("int32", 255))
                part = part if j == 0 else tirx.LShift(part, tirx.IntImm("int32", 8 * j))
                word = part if word is None else tirx.BitwiseOr(word, part)
            var = tirx.Var(f"w{u}_{q}", "int32")
            stmts.append(tirx.Bind(var, word))
            words[u, q] = tirx.reinterpret(f"int8x{4 * lanes}", tirx.Broadcast(var, lanes))
    intrin = f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"
    # rows of output tiles: xt tiles per step (independent accumulator chains); the last
    # tile starts at x0max (overlapping), a row narrower than a tile is one partial tile
    ntiles = -(-wo // tile)
    t, y = tirx.Var("t", "int64"), tirx.Var("y", "int64")
    body = []
    for k in range(xt):
        x0 = Analyzer().simplify(tirx.Min((t * _i64(xt) + _i64(k)) * _i64(tile), _i64(x0max)))
        accs = []
        for p in range(phases):
            vec = tirx.Broadcast(tirx.IntImm("int32", 0), lanes)
            for u in range(kh):
                for q in range(nq):
                    base = x0 * _i64(sw) + _i64(sw * p + 4 * q)
                    ramp = tirx.Ramp(base, _i64(1), 4 * lanes)
                    data = tirx.BufferLoad(planes, [slot, y * _i64(sh) + _i64(u), ramp])
                    data = tirx.reinterpret(f"int8x{4 * lanes}", data)
                    vec = tirx.call_llvm_pure_intrin(f"int32x{lanes}", intrin, vec, data,
                                                     words[u, q])  # fmt: skip
            accs.append(tirx.Var(f"acc{k}_{p}", f"int32x{lanes}"))
            body.append(tirx.Bind(accs[-1], vec))
        count = min(tile, wo)  # this tile's outputs in column order, 16 per store
        for start in range(0, count, 16):
            m = min(16, count - start)
            order = [((start + i) % phases) * lanes + (start + i) // phases for i in range(m)]
            value = tirx.Shuffle(accs, [tirx.IntImm("int32", v) for v in order])
            column = x0 + _i64(start)
            index = [n, c, y, tirx.Ramp(column, _i64(1), m) if m > 1 else column]
            body.append(tirx.BufferStore(acc, value, index))
    steps = -(-ntiles // xt)
    stmts.append(_for(y, info["h"], _for(t, steps, tirx.SeqStmt(body))))
    return tirx.SeqStmt(stmts), planes


TEMPLATES: tuple = (Int8Conv2d(), Int8Depthwise(), Int8Matmul())
