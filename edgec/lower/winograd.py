"""Winograd F(m x m, 3 x 3) convolution (m = 4 or 2), stride 1, groups 1, fp32.

With ``alpha = m + 2`` and the Cook-Toom matrices ``A, B, G`` (TVM's interpolation points):

* weights: ``U[e, v, c, k] = (G g_kc G^T)[e, v]``, computed in numpy at compile time (a constant);
* ``winograd_pack``: the input, zero-padded (the padding folded in) and channel-blocked
  ``[n, C/cb, H', W', cb]`` so the input transform can run on channel vectors;
* ``winograd_input``: ``V[e, v, p, c] = (B^T d_pc B)[e, v]`` for every ``m x m`` output tile p,
  written as one sum of the non-zero terms per (e, v) (selected by constant (e, v) once those
  loops are unrolled: no multiplications by zero);
* ``winograd_gemm``: ``M[e, v, p, k] = sum_c V[e, v, p, c] U[e, v, c, k]``, alpha^2 GEMMs,
  register-tiled ``pb`` tiles x ``kb`` output channels (a vector), U packed ``[.., K/kb, C, kb]``;
* ``winograd_output``: ``Y = A^T M A`` per tile, injective, inlined into the fused epilogue
  (bias, residual, ReLU), vectorized over output channels.

FLOPs per output: ``alpha^2/m^2`` multiply-adds per (c, k) instead of 9 (F(4x4): 2.25, a 4x
cut; F(2x2): 4, 2.25x), plus the transforms. The rounding differs from the direct sum; the
error is measured per layer on its real weights (``layer_error``) and bounded by
``conv_algos.WINOGRAD_RTOL``.
"""

from __future__ import annotations

import functools

import numpy as np

from edgec.lower.conv_algos import ConvSpec, padded

TILES = (4, 2)


@functools.cache
def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (alpha x m), B (alpha x alpha), G (alpha x 3), float64, as TVM's TOPI uses them."""
    from tvm.topi.nn import winograd_util as wu

    a, b, g = wu._cook_toom_convolution(wu._interpolation_points(m + 1), m, 3)
    return np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(g, np.float64)


def transform_weight(weight: np.ndarray, m: int) -> np.ndarray:
    _, _, g = matrices(m)
    u = np.einsum("ei,kcij,vj->evck", g, weight.astype(np.float64), g)
    return np.ascontiguousarray(u.astype(np.float32))


def relax_parts(spec: ConvSpec, weight: np.ndarray, m=None):
    m = m or TILES[0]
    return transform_weight(weight, m), lambda x, u: compute(x, u, spec, m)


def _channel_block(c: int) -> int:
    return next(b for b in (16, 8, 4, 2, 1) if c % b == 0)


def _sum_terms(terms):
    """sum of (coef, expr) with +-1 coefficients as plain adds/subtracts."""
    from tvm import tirx

    out = None
    for coef, e in terms:
        if coef == 1.0:
            t, neg = e, False
        elif coef == -1.0:
            t, neg = e, True
        else:
            t, neg = e * tirx.const(float(coef), "float32"), False
        if out is None:
            out = -t if neg else t
            continue
        out = out - t if neg else out + t
    return out if out is not None else tirx.const(0.0, "float32")


def _select(index, branches):
    """``branches[index]`` for a symbolic index: a short chain of Selects that folds to one
    branch once the index is a constant (an unrolled loop)."""
    from tvm import tirx

    out = branches[-1]
    for i in range(len(branches) - 2, -1, -1):
        out = tirx.Select(index == i, branches[i], out)
    return out


def _combine(mat: np.ndarray, col: int, load) -> object:
    """sum_a mat[a, col] * load(a) over the non-zero entries."""
    return _sum_terms((mat[a, col], load(a)) for a in range(mat.shape[0]) if mat[a, col] != 0)


def compute(x, u, spec: ConvSpec, m: int = 4):
    """Separable transforms (B^T d B as a row then a column pass; A^T M A likewise), each an
    injective stage selecting over one constant index: cheap to compile, no zero terms."""
    from tvm import te

    s = spec
    a_mat, b_mat, _ = matrices(m)
    alpha = m + 2
    nh, nw = -(-s.ho // m), -(-s.wo // m)
    tiles = s.n * nh * nw
    cb = _channel_block(s.cin)
    xp = te.compute(
        (s.n, s.cin // cb, nh * m + 2, nw * m + 2, cb),
        lambda n, co, hh, ww, ci: padded(x, s, n, co * cb + ci, hh, ww),
        name="winograd_pack",
    )

    def tile(p):
        return p // (nh * nw), p // nw % nh, p % nw

    def rows(e, b, p, c):  # (B^T d)[e, b]
        n, th, tw = tile(p)
        return _select(e, [
            _combine(b_mat, ee, lambda a: xp[n, c // cb, th * m + a, tw * m + b, c % cb])
            for ee in range(alpha)
        ])  # fmt: skip

    t1 = te.compute((alpha, alpha, tiles, s.cin), rows, name="winograd_rows")
    vin = te.compute(
        (alpha, alpha, tiles, s.cin),
        lambda e, v, p, c: _select(
            v, [_combine(b_mat, vv, lambda b: t1[e, b, p, c]) for vv in range(alpha)]
        ),
        name="winograd_input",
    )
    c = te.reduce_axis((0, s.cin), "c")
    mm = te.compute(
        (alpha, alpha, tiles, s.cout),
        lambda e, v, p, k: te.sum(vin[e, v, p, c] * u[e, v, c, k], axis=c),
        name="winograd_gemm",
    )
    cols = te.compute(  # (M A)[a, vw]
        (alpha, m, tiles, s.cout),
        lambda a, vw, p, k: _select(
            vw, [_combine(a_mat, j, lambda b: mm[a, b, p, k]) for j in range(m)]
        ),
        name="winograd_cols",
    )

    def y_value(n, k, h, w):
        p = n * (nh * nw) + h // m * nw + w // m
        return _select(
            h % m, [_combine(a_mat, i, lambda a: cols[a, w % m, p, k]) for i in range(m)]
        )

    return te.compute((s.n, s.cout, s.ho, s.wo), y_value, name="winograd_output")


class Winograd:
    name = "winograd"

    def match(self, func) -> dict:
        from edgec.lower import schedules as S

        sch = S.s_tir.Schedule(func)
        blocks = S._blocks(sch)
        names = [b["name"] for b in blocks]
        for need in ("winograd_pack", "winograd_rows", "winograd_input", "winograd_gemm",
                     "winograd_cols", "winograd_output"):  # fmt: skip
            if need not in names:
                raise S.NotMine(f"no {need} block")
        index, gemm = S._anchor(blocks)
        if gemm["name"] != "winograd_gemm":
            raise S.Decline("the reduction is not winograd_gemm")
        alpha, _, tiles, k, c = gemm["extents"]
        uparam = S._param_index(func, gemm["reads"][1])
        if uparam is None:
            raise S.Decline("the transformed weight is not a parameter")
        out = blocks[-1]["extents"]
        return {
            "m": alpha - 2, "tiles": tiles, "k": k, "c": c, "anchor": index,
            "weight_param": uparam, "n": out[0], "h": out[2], "w": out[3],
            "flops": 2 * out[0] * k * out[2] * out[3] * c * 9,  # the direct conv's (comparable)
        }  # fmt: skip

    def space(self, info: dict, lanes: int) -> list[dict]:
        from edgec.lower import schedules as S

        out = [self.default(info, lanes)]
        for kb in S._divisors(info["k"], (lanes, 2 * lanes)):
            for pb in (4, 6, 8):
                out.append({"kb": kb, "pb": min(pb, info["tiles"])})
        return list({tuple(sorted(k.items())): k for k in out}.values())

    def default(self, info: dict, lanes: int) -> dict:
        from edgec.lower import schedules as S

        kb = (S._divisors(info["k"], (lanes, lanes // 2, 4, 2)) or [1])[0]
        return {"kb": kb, "pb": min(6, info["tiles"])}

    def apply(self, func, info: dict, knobs: dict):
        from edgec.lower import schedules as S

        func = func.with_attr("layout_free_buffers", [info["weight_param"]])
        sch = S.s_tir.Schedule(func)
        blocks = S._blocks(sch)
        by_name = {b["name"]: b["block"] for b in blocks}
        gemm = by_name["winograd_gemm"]
        m, kb, pb = info["m"], knobs["kb"], knobs["pb"]
        # output transform + epilogue: one vectorized loop nest over (tile, k-vector)
        cols_at = [b["name"] for b in blocks].index("winograd_cols")
        out = S._inline_epilogue(sch, blocks, cols_at)["block"]
        kv = (S._divisors(info["k"], (16, 8, 4, 2)) or [1])[0]
        n, k, h, w = sch.get_loops(out)
        ko, ki = sch.split(k, [None, kv])
        th, vh = sch.split(h, [None, m])
        tw, vw = sch.split(w, [None, m])
        sch.reorder(n, th, tw, ko, vh, vw, ki)
        sch.unroll(vh)
        sch.unroll(vw)
        if kv > 1:
            sch.vectorize(ki)
        cols = by_name["winograd_cols"]
        sch.compute_at(cols, ko)
        a_, vw_, *rest = S._loops_below(sch, cols, ko)
        for lp in (a_, vw_):
            sch.unroll(lp)
        if kv > 1 and rest:
            sch.vectorize(rest[-1])
        S._parallel_outer(sch, [n, th, tw])
        # the batched GEMM: accumulators pb x kb in registers
        mout = sch.cache_write(gemm, 0, "global")
        e, v, p, kk = sch.get_loops(mout)
        po, pi = sch.split(p, [None, pb])
        ko2, ki2 = sch.split(kk, [None, kb])
        sch.reorder(e, v, ko2, po, pi, ki2)
        (cp, ck), red = S.tile_at(sch, gemm, po, (pb, kb))
        S.vector_tile(sch, red, cp, ck)
        ub = sch.cache_read(gemm, 1, "global")
        sch.transform_layout(ub, ("write", 0), lambda a, b, c, k_: (a, b, k_ // kb, c, k_ % kb))
        sch.annotate(ub, "meta_schedule.layout_rewrite_preproc", True)
        if kb > 1:
            sch.vectorize(ki2)
        S._parallel_outer(sch, [e, v, ko2], min_iters=64)
        sch.decompose_reduction(gemm, red[0])
        # the input transform: unrolled (e, v), vectorized over channels
        vin = by_name["winograd_input"]
        e, v, p, c = sch.get_loops(vin)
        cb = _channel_block(info["c"])
        co, ci = sch.split(c, [None, cb])
        sch.reorder(p, co, e, v, ci)
        sch.unroll(e)
        sch.unroll(v)
        if cb > 1:
            sch.vectorize(ci)
        rows = by_name["winograd_rows"]
        sch.compute_at(rows, co)
        e_, b_, *rest = S._loops_below(sch, rows, co)
        sch.unroll(e_)
        sch.unroll(b_)
        if cb > 1 and rest:
            sch.vectorize(rest[-1])
        S._parallel_outer(sch, [p])
        S._parallel_outer(sch, sch.get_loops(by_name["winograd_pack"])[:-1])
        return sch.mod["main"]


TEMPLATE = Winograd()


def layer_error(spec: ConvSpec, weight: np.ndarray, m: int, *, seed: int = 0) -> float:
    """Winograd's error on this layer: the algorithm in float32 (numpy, same transforms and
    summation structure as the kernel) vs the exact convolution, relative to the output's
    magnitude, on seeded uniform [-1, 1) inputs."""
    from edgec.lower.conv_algos import reference_conv, relative_error

    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (1, spec.cin, spec.h, spec.w)).astype(np.float32)
    one = ConvSpec(**{**spec.__dict__, "n": 1})
    return relative_error(emulate(x, weight, one, m), reference_conv(x, weight, one))


def emulate(x: np.ndarray, weight: np.ndarray, spec: ConvSpec, m: int) -> np.ndarray:
    """Winograd F(m, 3) in float32 numpy, as the kernel computes it."""
    a_mat, b_mat, _ = matrices(m)
    a32, b32 = a_mat.astype(np.float32), b_mat.astype(np.float32)
    u = transform_weight(weight, m)
    alpha, nh, nw = m + 2, -(-spec.ho // m), -(-spec.wo // m)
    t, left = spec.pads[0], spec.pads[1]
    xp = np.zeros((spec.n, spec.cin, nh * m + 2, nw * m + 2), np.float32)
    hh, ww = min(spec.h, nh * m + 2 - t), min(spec.w, nw * m + 2 - left)
    xp[:, :, t : t + hh, left : left + ww] = x[:, :, :hh, :ww]
    # tiles d[n, c, th, tw, a, b]
    idx_h = (np.arange(nh) * m)[:, None] + np.arange(alpha)[None]
    idx_w = (np.arange(nw) * m)[:, None] + np.arange(alpha)[None]
    d = xp[:, :, idx_h[:, :, None, None], idx_w[None, None]]  # n c th a tw b
    v = np.einsum("ncxayb,ae,bv->evncxy", d, b32, b32, dtype=np.float32)
    mm = np.einsum("evncxy,evck->evnkxy", v, u, dtype=np.float32)
    y = np.einsum("evnkxy,ei,vj->nkxiyj", mm, a32, a32, dtype=np.float32)
    y = y.reshape(spec.n, spec.cout, nh * m, nw * m)
    return y[:, :, : spec.ho, : spec.wo]
