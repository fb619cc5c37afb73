"""int8 convolutions and matmuls on arm64 dot products (``sdot``, ARMv8.2 ``+dotprod``:
Cortex-A55/A76 and newer), for the integer kernels of ``edgec.lower.qdq``. The convolution
template is described here; ``Int8MatmulSdot`` (weight matmuls) has its own docstring.

``sdot`` is signed x signed: ``acc[i] += sum_j a[4i + j] * b[4i + j]`` over 4 int32 lanes, 16
int8 each of ``a`` and ``b``. On these targets ``qdq`` therefore gives dense convolutions int8
activations (``signed_conv``: uint8 ones as ``x - 128``, with the zero point and the
``-zx * sum(w)`` bias offset in the same units, so the integer result is unchanged), and this
template computes ``acc[f] += s8(x[c]) * s8(w[f, c])``:

* weights packed at compile time to ``[F/fb, C/4, KH, KW, fb*4]`` (``layout_rewrite_preproc``):
  per reduction step the ``fb`` output channels x 4 input channels of the tile are ``fb*4``
  contiguous bytes, ``fb/4`` registers of 16;
* the input (padding, zero point and sign shift inlined) copied per call to ``[N, C/4, H, W, 4]``:
  the 4 channels of a pixel are one 32-bit word, broadcast to the 4 lanes of the sdot operand;
* ``xb`` output columns x ``fb/4`` accumulator registers of 4 int32 per tile; the requantization
  epilogue writes the NCHW output row-wise (``epi="x"``) or channel-wise.

The 4 x 4 step is ``llvm.aarch64.neon.sdot`` written as ``T.call_llvm_pure_intrin`` into the
blockized update (``tensorize`` crashes in TVM 0.27), as in ``edgec.lower.int8``.
Without ``+dotprod`` (Cortex-A53/A72, generic arm64) the template declines: the generic integer
schedule runs (int8 x int8 widened by LLVM).
"""

from __future__ import annotations

from tvm import s_tir, tirx

from edgec.lower.int8 import (
    _region,
    _vector_index,
    finish_matmul,
    operand_copies,
    schedules_key,
)

Knobs = dict

STEP = 4  # one sdot: 4 output channels (int32 lanes) x 4 input channels
INTRINSIC = "llvm.aarch64.neon.sdot.v4i32.v16i8"
MAX_ACC = 24  # accumulator registers per tile (32 NEON registers: weights and input beside)


def _sched():
    """edgec.lower.schedules (imported lazily: its TEMPLATES include this module's)."""
    from edgec.lower import schedules

    return schedules


def has_sdot(tgt) -> bool:
    """Whether the TVM target ``tgt`` (a ``tvm.target.Target`` or its JSON dict) is arm64 with
    the int8 dot-product instructions."""
    import tvm
    import tvm_ffi

    if isinstance(tgt, dict):
        if tgt.get("kind") != "llvm":
            return False
        tgt = tvm.target.Target(tgt)
    if str(tgt.kind.name) != "llvm" or not str(tgt.attrs.get("mtriple", "")).startswith("aarch64"):
        return False
    return bool(tvm_ffi.get_global_func("target.llvm_cpu_has_feature")("dotprod", tgt))


def _arm64() -> tuple[bool, bool]:
    """(arm64, has sdot) for the current target (inside ``with target``)."""
    import tvm

    tgt = tvm.target.Target.current(allow_none=True)
    if tgt is None or str(tgt.kind.name) != "llvm":
        return False, False
    return str(tgt.attrs.get("mtriple", "")).startswith("aarch64"), has_sdot(tgt)


def _int8_anchor(kind, func: tirx.PrimFunc, activations: tuple[str, ...], what: str):
    """``kind``'s match info (a Conv2d or Matmul template), the schedule and the anchor block
    of an x int8 -> int32 ``what`` with x of ``activations`` on an arm64 target with sdot;
    raises NotMine / Decline otherwise."""
    arm64, sdot = _arm64()
    if not arm64:
        raise _sched().NotMine("not an arm64 target")
    info = kind.match(func)
    sch = s_tir.Schedule(func)
    anchor = _sched()._blocks(sch)[info["anchor"]]
    x, w = anchor["reads"]
    if (str(w.dtype), str(anchor["writes"].dtype)) != ("int8", "int32") or str(
        x.dtype
    ) not in activations:
        raise _sched().NotMine(f"not an int8 {what}")
    if not sdot:
        raise _sched().Decline("no +dotprod on this arm64 target (sdot)")
    return info, sch, anchor


def _tiles(info: dict) -> list[tuple[int, int]]:
    """(fb, xb) tiles: fb output channels (a multiple of 4 dividing F) x xb output columns
    (dividing W), at most MAX_ACC accumulator registers."""
    fbs = [fb for fb in (4, 8, 16, 32) if info["f"] % fb == 0]
    w = info["w"]
    return [(fb, xb) for fb in fbs for xb in range(1, min(w, 16) + 1)
            if w % xb == 0 and xb * fb // STEP <= MAX_ACC]  # fmt: skip


class Int8ConvSdot:
    """Dense (groups = 1) s8 x s8 -> s32 NCHW convolutions on arm64 +dotprod, C % 4 == 0 and
    F % 4 == 0."""

    name = "int8_conv2d_sdot"

    def match(self, func: tirx.PrimFunc) -> dict:
        info, sch, conv = _int8_anchor(_sched().Conv2d(), func, ("int8", "uint8"), "convolution")
        data, _ = conv["reads"]
        channels = int(data.shape[1])
        if info["cin_per_group"] != channels:
            raise _sched().Decline("grouped convolution")
        if str(data.dtype) != "int8":
            raise _sched().Decline("uint8 activations (qdq gives sdot targets int8 ones)")
        if channels % STEP or info["f"] % STEP:
            raise _sched().Decline(f"C={channels} or F={info['f']} not a multiple of {STEP}")
        info.update(cin=channels)
        return info

    def space(self, info: dict, lanes: int) -> list[Knobs]:
        out = [self.default(info, lanes)] + [
            {"fb": fb, "xb": xb, **epi}
            for fb, xb in _tiles(info)
            if xb * fb // STEP >= 4 or xb == info["w"]  # enough independent accumulators
            for epi in ({}, {"epi": "x"})
        ]
        return list({schedules_key(k): k for k in out}.values())

    def default(self, info: dict, lanes: int) -> Knobs:
        """The tile with the most accumulators, then the fewest loads per sdot."""

        def score(tile: tuple[int, int]) -> tuple:
            fb, xb = tile
            regs = fb // STEP
            return (xb * regs, -(regs + xb) / (regs * xb), fb)

        fb, xb = max(_tiles(info), key=score)
        return {"fb": fb, "xb": xb, "epi": "x"}

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: Knobs) -> tirx.PrimFunc:
        if info["weight_param"] not in info.get("constants", ()):
            raise _sched().Decline("the weight is not a constant (cannot be packed)")
        fb, xb = knobs["fb"], knobs["xb"]
        if info["f"] % fb or fb % STEP:
            raise _sched().Decline(f"F={info['f']} not a multiple of fb={fb}")
        S = _sched()  # noqa: N806
        func = func.with_attr("layout_free_buffers", [info["weight_param"]])
        sch = s_tir.Schedule(func)
        blocks = S._blocks(sch)
        conv = blocks[info["anchor"]]["block"]
        # input: padding and shifts inlined into one copy, channel groups of 4 innermost
        xcache = sch.cache_read(conv, 0, "global")
        for b in blocks[: info["anchor"]]:
            sch.compute_inline(b["block"])
        sch.transform_layout(xcache, ("write", 0),
                             lambda n, c, h, w: (n, c // STEP, h, w, c % STEP))  # fmt: skip
        # weights: [F/fb, C/4, KH, KW, fb * 4], packed at compile time
        wcache = sch.cache_read(conv, 1, "global")
        sch.transform_layout(
            wcache, ("write", 0),
            lambda f, c, u, v: (f // fb, c // STEP, u, v, (f % fb) * STEP + c % STEP),
        )  # fmt: skip
        sch.annotate(wcache, "meta_schedule.layout_rewrite_preproc", True)
        if info["anchor"] == len(blocks) - 1:
            out = sch.cache_write(conv, 0, "global")
        else:
            out = S._inline_epilogue(sch, blocks, info["anchor"])["block"]
        sch.transform_layout(conv, ("write", 0),
                             lambda n, f, h, w: (n, f // fb, h, w, f % fb))  # fmt: skip
        n, f, y, x = sch.get_loops(out)
        fo, fi = sch.split(f, [None, fb])
        xo, xi = sch.split(x, [None, xb])
        sch.reorder(n, fo, y, xo, xi, fi)
        fvec = fi
        if knobs.get("epi") == "x":  # epilogue vectorized along the row: contiguous stores
            sch.reorder(fi, xi)
            fvec = xi
        (cf, cx), reduction = S.tile_at(sch, conv, xo, (fb, xb))
        if not reduction or int(sch.get(reduction[0]).extent) != info["cin"]:
            raise _sched().Decline("unexpected reduction loops")
        co, ci = sch.split(reduction[0], [None, STEP])
        cfo, cfi = sch.split(cf, [fb // STEP, STEP]) if fb > STEP else (None, cf)
        sch.reorder(co, *reduction[1:], *(lp for lp in (cx, cfo) if lp is not None), cfi, ci)
        sch.vectorize(fvec)
        S._parallel_outer(sch, [n, fo, y])
        S._parallel_outer(sch, sch.get_loops(xcache)[:-1])
        init = sch.decompose_reduction(conv, co)
        update = sch.blockize(cfi)
        for lp in (cx, cfo):
            if lp is not None:
                sch.unroll(lp)
        sch.vectorize(sch.get_loops(init)[-1])
        x_buf = sch.get(xcache).writes[0].source
        w_buf = sch.get(wcache).writes[0].source
        _replace_body(sch, update, x_buf, w_buf)
        return sch.mod["main"]


class Int8MatmulSdot:
    """s8 x s8 -> s32 matmuls ``x[.., M, K] @ w[.., K, N]`` on arm64 +dotprod (on sdot targets
    ``qdq`` gives matmuls int8 activations): a constant 2-D weight (Linear/Gemm/MatMul layers,
    K % 4 == 0 and N % 4 == 0), or an activation B (attention: one [K, N] per batch index).

    B is packed to ``[.., N/fb, K/4, fb*4]``: at compile time for a constant weight, per call
    (N and K padded with zeros to whole tiles: exact) for an activation. x is read in place (4
    consecutive k bytes are one 32-bit word, broadcast to the sdot operand), or copied once with
    M (and K) padded. A tile of ``mb`` rows x ``fb`` columns keeps ``mb * fb/4`` accumulator
    registers over k in steps of 4 (one sdot per row and 4 columns); the requantization
    epilogue runs per tile, vectorized along n (with N padded: after the matmul, per row).
    Knobs: ``mb``, ``fb``.
    """

    name = "int8_matmul_sdot"

    def match(self, func: tirx.PrimFunc) -> dict:
        info, sch, mm = _int8_anchor(_sched().Matmul(), func, ("int8",), "matmul")
        w = mm["reads"][1]
        stmt = sch.get(mm["block"])
        x_last = stmt.reads[0].region[-1].min
        batch = [int(d) for d in info["batch"]]
        batched = len(w.shape) == 2 + len(batch) and [int(d) for d in w.shape[:-2]] == batch
        if info["transposed"] or info["b_param"] is None or not (len(w.shape) == 2 or batched):
            raise _sched().Decline("B is not a [.., K, N] function parameter")
        if not (isinstance(x_last, tirx.Var) and x_last.same_as(stmt.iter_vars[-1].var)):
            raise _sched().Decline("the activation is not K-contiguous")
        return info

    def space(self, info: dict, lanes: int) -> list[Knobs]:
        out = [self.default(info, lanes), *self._tiles(info)]
        return list({schedules_key(k): k for k in out}.values())

    def default(self, info: dict, lanes: int) -> Knobs:
        """The most accumulators (up to 16: weights and rows of x need registers too), then
        the squarer tile (fewer loads per sdot)."""
        tiles = [(k["mb"], k["fb"]) for k in self._tiles(info)]
        if not tiles:
            raise _sched().Decline(f"K={info['k']} or N={info['n']} not a multiple of {STEP}")
        mb, fb = max(tiles, key=lambda t: (min(t[0] * t[1] // STEP, 16), -abs(t[0] - t[1] // 4)))
        return {"mb": mb, "fb": fb}

    def _tiles(self, info: dict) -> list[Knobs]:
        activation = info["b_param"] not in info.get("constants", ())
        if not activation and info["k"] % STEP:
            return []
        fbs = [fb for fb in (4, 8, 16, 32) if activation or info["n"] % fb == 0]
        if activation:  # the least padding of N first
            fbs = [fb for fb in fbs if fb <= max(STEP, 2 * info["n"])]
        mbs = sorted({min(info["m"], x) for x in (1, 2, 4, 6, 8)})
        return [{"mb": mb, "fb": fb} for fb in fbs for mb in mbs if mb * fb // STEP <= MAX_ACC]

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: Knobs) -> tirx.PrimFunc:
        mb, fb = knobs["mb"], knobs["fb"]
        constant = info["b_param"] in info.get("constants", ())
        pad_n, pad_k = info["n"] % fb, info["k"] % STEP
        if fb % STEP or (constant and (pad_n or pad_k)):
            raise _sched().Decline(f"K={info['k']} or N={info['n']} not whole {STEP}x{fb} steps")
        S = _sched()  # noqa: N806
        if constant:
            func = func.with_attr("layout_free_buffers", [info["b_param"]])
        sch = s_tir.Schedule(func)
        blocks = S._blocks(sch)
        anchor = info["anchor"]
        mm = blocks[anchor]["block"]
        if anchor == len(blocks) - 1:
            out = sch.cache_write(mm, 0, "global")
        else:
            out = S._inline_epilogue(sch, blocks, anchor)["block"]
        nbatch = len(info["batch"])
        xcopy = wcache = None
        if info["m"] % mb or pad_n or pad_k:  # padded with zeros (padded rows/columns dropped)
            tile = [mb if info["m"] % mb else 1, fb if pad_n else 1, STEP if pad_k else 1]
            sch.pad_einsum(mm, [1] * nbatch + tile)
            copy_out = sch.get_consumers(mm)[0]
            if not sch.get(copy_out).same_as(sch.get(out)):
                sch.compute_inline(copy_out)
            x_pad, w_pad = (r.source for r in sch.get(mm).reads[:2])
            for p in sch.get_producers(mm):
                written = sch.get(p).writes[0].source
                xcopy = p if written.same_as(x_pad) else xcopy
                wcache = p if written.same_as(w_pad) else wcache
        xcopy, wcache = operand_copies(sch, mm, blocks[:anchor], xcopy, wcache)

        def packed(*ix):  # [.., K, N] -> [.., N/fb, K/4, fb*4]
            k_, n_ = ix[-2], ix[-1]
            return (*ix[:-2], n_ // fb, k_ // STEP, (n_ % fb) * STEP + k_ % STEP)

        sch.transform_layout(wcache, ("write", 0), packed)
        if constant:
            sch.annotate(wcache, "meta_schedule.layout_rewrite_preproc", True)
        else:
            S._parallel_outer(sch, sch.get_loops(wcache)[:-1])
        *batch, i, j, k = sch.get_loops(mm)
        io, ii = sch.split(i, [None, mb])
        jo, jm, jf = sch.split(j, [None, fb // STEP, STEP])
        ko, ki = sch.split(k, [None, STEP])
        sch.reorder(*batch, jo, io, ko, ii, jm, jf, ki)
        if pad_n:  # per tile the last columns would need a predicate: per row, after the matmul
            S._parallel_outer(sch, sch.get_loops(out)[:-1])
        else:
            sch.reverse_compute_at(out, io)
            sch.vectorize(S._loops_below(sch, out, io)[-1])
        S._parallel_outer(sch, [*batch, jo, io])
        update = finish_matmul(sch, mm, xcopy, ko, jf, (ii, jm), (16, 8, 4))
        x_buf = blocks[anchor]["reads"][0] if xcopy is None else sch.get(xcopy).writes[0].source
        _replace_body(sch, update, x_buf, sch.get(wcache).writes[0].source)
        return sch.mod["main"]


def _replace_body(sch: s_tir.Schedule, block, x_buf, w_buf) -> None:
    """The blockized 4 x 4 update as one sdot: 4 weight rows of 4 bytes against the pixel's 4
    input channels (one 32-bit word) broadcast to the 4 lanes."""
    stmt = sch.get(block)
    acc_buf = stmt.writes[0].source
    acc_idx = _vector_index(_region(stmt, acc_buf), STEP)
    x = tirx.BufferLoad(x_buf, _vector_index(_region(stmt, x_buf), STEP))  # int8 x 4
    w = tirx.BufferLoad(w_buf, _vector_index(_region(stmt, w_buf), STEP * STEP))  # int8 x 16
    a = tirx.reinterpret(f"int8x{STEP * STEP}", tirx.Broadcast(tirx.reinterpret("int32", x), STEP))
    acc = tirx.BufferLoad(acc_buf, acc_idx)
    value = tirx.call_llvm_pure_intrin(f"int32x{STEP}", INTRINSIC, acc, w, a)
    body = tirx.BufferStore(acc_buf, value, acc_idx)
    new = s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, body, stmt.init,
                       stmt.alloc_buffers, stmt.match_buffers, stmt.annotations)  # fmt: skip
    sch.state.replace(sch.get_sref(block), new, {stmt: new})


TEMPLATES: tuple = (Int8ConvSdot(), Int8MatmulSdot())
