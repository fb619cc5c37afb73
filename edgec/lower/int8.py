"""int8 schedule templates: uint8 x int8 -> int32 convolutions and matmuls on x86 dot-product
instructions, for the integer kernels of ``edgec.lower.qdq``.

The anchor computes ``acc[f] += u8(x[c]) * s8(w[f, c])`` (``qdq`` moves int8 activations to
uint8 with +128 and folds ``-zx * sum(w)`` into the bias, so every product is u8 x s8). The
conv template (``Int8Conv2d``; ``Int8Matmul`` does the same for ``x[.., M, K] @ w[K, N]``, whose
x is already K-contiguous) re-lays the operands out for a micro-kernel of 16 output channels x 4
input channels:

* weights packed at compile time to ``[F/16, C/4, KH, KW, 16*4]`` (``layout_rewrite_preproc``);
* the input (padding, zero point and the +128 shift inlined) copied per call to
  ``[N, C/4, H, W, 4]`` so the 4 channels of a pixel are one 32-bit word;
* the accumulator tile as ``[.., 16]`` (16 int32 lanes), ``xb`` output columns kept in registers;
  the requantization epilogue reads the tile and writes the NCHW output row-wise (``epi="x"``,
  contiguous stores) or channel-wise (strided stores).

The 16x4 step is one instruction, written as ``T.call_llvm_pure_intrin`` into the block body
(``tensorize`` crashes in TVM 0.27): the update block over (16 channels x 4) is blockized and its
body replaced by the intrinsic on vector loads taken from the block's own read/write regions.

* ``vnni`` (AVX512-VNNI): ``vpdpbusd`` zmm: 16 x (4 u8 x s8 products summed) into int32, exact.
* ``avx2``: no VNNI, so ``vpmaddubsw`` would be next, but it saturates int16 (255 * 127 * 2 >
  32767), so this path widens both operands to int16 (u8 zero-extended, s8 sign-extended) and uses
  ``vpmaddwd`` (int16 pairs -> int32, exact) twice per 16x4 step: exact for all 8-bit weights.
"""

from __future__ import annotations

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
        if channels % cb or info["f"] % fb:
            raise Decline(f"C={channels} not a multiple of {cb} or F={info['f']} of {fb}")
        info.update(isa=isa, cin=channels)
        return info

    def space(self, info: dict, lanes: int) -> list[Knobs]:
        fb = MICRO[info["isa"]][0]
        w = info["w"]
        xbs = sorted({x for x in (4, 7, 8, 14, 16, w) if x <= min(w, 16) and w % x == 0})
        fks = [k for k in (1, 2) if info["f"] % (k * fb) == 0]
        out = [self.default(info, lanes)] + [
            {"xb": xb, "fk": fk, **epi} for fk in fks for xb in xbs for epi in ({}, {"epi": "x"})
        ]
        return list({schedules_key(k): k for k in out}.values())

    def default(self, info: dict, lanes: int) -> Knobs:
        xb = next((x for x in range(16, 3, -1) if info["w"] % x == 0), 8)
        return {"xb": min(xb, info["w"]), "fk": 1, "epi": "x"}

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: Knobs) -> tirx.PrimFunc:
        if info["weight_param"] not in info.get("constants", ()):
            raise Decline("the weight is not a constant (cannot be packed)")
        xb, fk = knobs["xb"], knobs.get("fk", 1)  # fk: micro-kernel channel blocks per tile
        FB, CB = MICRO[info["isa"]]  # noqa: N806
        func = func.with_attr("layout_free_buffers", [info["weight_param"]])
        sch = s_tir.Schedule(func)
        blocks = _sched()._blocks(sch)
        conv = blocks[info["anchor"]]["block"]
        # input: padding and shifts inlined into one copy, channel groups of 4 innermost
        xcache = sch.cache_read(conv, 0, "global")
        for b in blocks[: info["anchor"]]:
            sch.compute_inline(b["block"])
        sch.transform_layout(xcache, ("write", 0),
                             lambda n, c, h, w: (n, c // CB, h, w, c % CB))  # fmt: skip
        # weights: [F/16, C/4, KH, KW, 16 * 4], packed at compile time
        wcache = sch.cache_read(conv, 1, "global")
        sch.transform_layout(
            wcache, ("write", 0),
            lambda f, c, u, v: (f // FB, c // CB, u, v, (f % FB) * CB + c % CB),
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
        sch.reorder(n, fo, y, xo, xi, fi)
        fvec = sch.split(fi, [fk, FB])[1] if fk > 1 else fi
        if knobs.get("epi") == "x":  # epilogue vectorized along the row: contiguous stores
            sch.reorder(fvec, xi)
            fvec = xi
        sch.compute_at(conv, xo)
        inner = _sched()._loops_below(sch, conv, xo)
        tiled = sum(e > 1 for e in (fk * FB, xb))
        cf, cx = _sched()._tile_loops(sch, inner[:tiled], (fk * FB, xb))
        reduction = inner[tiled:]
        if not reduction or int(sch.get(reduction[0]).extent) != info["cin"]:
            raise Decline("unexpected reduction loops")
        co, ci = sch.split(reduction[0], [None, CB])
        cfo, cfi = sch.split(cf, [fk, FB]) if fk > 1 else (None, cf)
        sch.reorder(co, *reduction[1:], *(lp for lp in (cx, cfo) if lp is not None), cfi, ci)
        sch.vectorize(fvec)
        _sched()._parallel_outer(sch, [n, fo, y])
        _sched()._parallel_outer(sch, sch.get_loops(xcache)[:-1])
        init = sch.decompose_reduction(conv, co)
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
        if xcopy is None and anchor:
            xcopy = sch.cache_read(mm, 0, "global")
        for b in blocks[:anchor]:
            sch.compute_inline(b["block"])
        # B: [.., N/FB, K/CB, FB * CB]: packed at compile time (a constant weight), else per call
        if wcache is None:
            wcache = sch.cache_read(mm, 1, "global")
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
        if xcopy is not None:  # rows in parallel, 64-byte vectors along k
            *rows, kx = sch.get_loops(xcopy)
            _sched()._parallel_outer(sch, rows)
            extent = int(sch.get(kx).extent)
            width = next((w for w in (64, 32, 16, 8, 4, 2) if extent % w == 0), 1)
            if width > 1:
                sch.vectorize(sch.split(kx, [None, width])[1])
        init = sch.decompose_reduction(mm, ko)
        update = sch.blockize(jf)
        for lp in (ii, jm):
            sch.unroll(lp)
        sch.vectorize(sch.get_loops(init)[-1])
        _replace_body(sch, update, info["isa"])
        return sch.mod["main"]


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


TEMPLATES: tuple = (Int8Conv2d(), Int8Matmul())
