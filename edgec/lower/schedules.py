"""Schedule templates: register-blocked CPU kernels for the fused PrimFuncs of a Relax module.

After Relax's operator fusion every kernel is a PrimFunc: an anchor block (conv2d, matmul) with
injective producers (padding) and an injective epilogue (bias, residual add, ReLU/clip, GELU).
A template recognizes that shape, and schedules it from a small set of knobs:

* ``conv2d`` (NCHW, any stride/dilation/groups): the epilogue is inlined into the output block,
  which is tiled ``fb`` output channels x ``xb`` output columns; the conv is computed per tile in
  an accumulator kept in registers. ``vec="f"`` vectorizes over output channels (weights packed to
  ``[F/fb, C/g, KH, KW, fb]`` at compile time, input pixels broadcast: dense convs);
  ``vec="x"`` vectorizes over output columns (depthwise convs, whose input is per channel).
* ``matmul`` (2-D and batched): tile ``mb`` rows x ``nb`` columns, vectorized over columns,
  reduction outermost inside the tile, accumulators in registers.
* ``injective`` / ``reduction``: everything else; outer loops parallel, inner loop vectorized.

Weight packing uses TVM's layout-rewrite mechanism: the packing block is annotated
``meta_schedule.layout_rewrite_preproc``, split out by ``SplitLayoutRewritePreproc`` and folded
into constants at compile time. Every template returns the knobs it used, and ``space`` lists the
candidates the latency-measured search tries.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

from tvm import s_tir, tirx

from edgec.lower import int8

Knobs = dict


@dataclasses.dataclass
class Kernel:
    """One PrimFunc of the module, as a template sees it."""

    name: str
    template: str | None
    info: dict
    flops: int = 0


class Decline(Exception):
    """The template does not apply to this function (the message says why)."""


class NotMine(Decline):
    """The function is not of the template's kind at all (not recorded in ``declined``)."""


def _block_info(sch: s_tir.Schedule, block) -> dict:
    stmt = sch.get(block)
    kinds = [int(iv.iter_type) for iv in stmt.iter_vars]
    return {
        "block": block,
        "name": stmt.name_hint,
        "reduction": any(k == 2 for k in kinds),  # IterVar.CommReduce
        "spatial": sum(k == 0 for k in kinds),
        "reduce": sum(k == 2 for k in kinds),
        "extents": [int(iv.dom.extent) for iv in stmt.iter_vars],
        "writes": stmt.writes[0].source if stmt.writes else None,
        "reads": [r.source for r in stmt.reads],
    }


def _blocks(sch: s_tir.Schedule) -> list[dict]:
    return [_block_info(sch, b) for b in sch.get_child_blocks(sch.get_sblock("root"))]


def _anchor(blocks: list[dict]) -> tuple[int, dict]:
    """The one reduction block (conv, matmul) of a kernel whose other blocks are injective."""
    reductions = [(i, b) for i, b in enumerate(blocks) if b["reduction"]]
    if len(reductions) != 1:
        raise Decline(f"{len(reductions)} reduction blocks")
    if any(not b["spatial"] for b in blocks):
        raise Decline("a block without spatial axes beside the reduction")
    return reductions[0]


def _inline_epilogue(sch: s_tir.Schedule, blocks: list[dict], anchor: int) -> dict:
    """Inline every block between the anchor and the last block; return the last block."""
    for b in blocks[anchor + 1 : -1]:
        try:
            sch.compute_inline(b["block"])
        except s_tir.ScheduleError as e:
            raise Decline(f"epilogue block {b['name']} cannot be inlined") from e
    return blocks[-1]


def _loops_below(sch: s_tir.Schedule, block, loop) -> list:
    loops = sch.get_loops(block)
    index = [sch.get(lp).same_as(sch.get(loop)) for lp in loops].index(True)
    return loops[index + 1 :]


def _param_index(func: tirx.PrimFunc, buffer) -> int | None:
    for i, param in enumerate(func.params):
        if param.same_as(buffer):
            return i
    return None


def _divisors(n: int, candidates: Sequence[int]) -> list[int]:
    return [c for c in candidates if c <= n and n % c == 0]


def _parallel_outer(sch: s_tir.Schedule, loops: list, min_iters: int = 8) -> None:
    """Fuse leading loops until there are at least ``min_iters`` iterations, then parallelize."""
    take, total = 0, 1
    for lp in loops:
        take += 1
        total *= int(sch.get(lp).extent)
        if total >= min_iters:
            break
    if take and total > 1:
        sch.parallel(sch.fuse(*loops[:take]) if take > 1 else loops[0])


class Conv2d:
    name = "conv2d"

    def match(self, func: tirx.PrimFunc) -> dict:
        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
        index, conv = _anchor(blocks)
        if conv["spatial"] != 4 or conv["reduce"] not in (2, 3) or len(conv["reads"]) != 2:
            raise Decline("not a 2-D convolution block")
        n, f, h, w = conv["extents"][:4]
        red = conv["extents"][4:]
        weight = conv["reads"][1]
        if len(weight.shape) != 4 or _param_index(func, weight) is None:
            raise Decline("weight is not a 4-D function parameter")
        cin_per_group, kh, kw = (int(d) for d in weight.shape[1:])
        last = blocks[-1]["extents"]
        if index != len(blocks) - 1 and last != conv["extents"][:4]:
            raise Decline("the output is not the convolution's shape")
        depthwise = cin_per_group == 1 and (len(red) == 2 or red[0] == 1)
        return {
            "n": n, "f": f, "h": h, "w": w, "cin_per_group": cin_per_group, "kh": kh, "kw": kw,
            "depthwise": depthwise, "anchor": index, "weight_param": _param_index(func, weight),
            "reduce": conv["reduce"], "padded": index > 0,
            "flops": 2 * n * f * h * w * cin_per_group * kh * kw,
        }  # fmt: skip

    def space(self, info: dict, lanes: int) -> list[Knobs]:
        out = [self.default(info, lanes)]
        if not info["depthwise"]:
            for fb in _divisors(info["f"], (lanes // 2, lanes, 2 * lanes)):
                for xb in sorted({min(info["w"], x) for x in (4, 6, 7, 8, 14)}):
                    out.append({"vec": "f", "fb": fb, "xb": xb})
        if info["depthwise"] and info["padded"]:
            for fb in _divisors(info["f"], (lanes // 2, lanes)):
                for xb in sorted({min(info["w"], x) for x in (4, 7, 8, 14)}):
                    out.append({"vec": "f", "fb": fb, "xb": xb, "pad": "row", "cblock": True})
        for xb in sorted({min(info["w"], x) for x in (lanes, 2 * lanes)}):
            for fb in _divisors(info["f"], (1, 2, 4)):
                for pad in ("row", "root"):
                    out.append({"vec": "x", "fb": fb, "xb": xb, "pad": pad})
        if info["padded"]:
            out += [{**k, "pad": "row"} for k in out if k["vec"] == "f" and "pad" not in k]
        return list({tuple(sorted(k.items())): k for k in out}.values())

    def default(self, info: dict, lanes: int) -> Knobs:
        fbs = _divisors(info["f"], (lanes, lanes // 2))
        if not info["depthwise"] and fbs:
            xb = next((x for x in (7, 8, 6, 4) if info["w"] % x == 0), 8)
            return {"vec": "f", "fb": fbs[0], "xb": min(xb, info["w"])}
        # depthwise: vectors along the row, several channels at once for independent FMAs
        fb = next(iter(_divisors(info["f"], (4, 2))), 1)
        return {"vec": "x", "fb": fb, "xb": min(lanes, info["w"]), "pad": "row"}

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: Knobs) -> tirx.PrimFunc:
        if knobs["vec"] == "f" and info["weight_param"] not in info.get("constants", ()):
            raise Decline("vec=f packs the weight, which is not a constant here")
        func = func.with_attr("layout_free_buffers", [info["weight_param"]])
        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
        conv = blocks[info["anchor"]]["block"]
        if info["anchor"] == len(blocks) - 1:  # no epilogue: accumulate in a buffer, then copy
            out = sch.cache_write(conv, 0, "global")
        else:
            out = _inline_epilogue(sch, blocks, info["anchor"])["block"]
        fb, xb = knobs["fb"], knobs["xb"]
        if knobs.get("cblock"):  # padded input as [n, c/fb, y, x, c%fb]: channel vectors
            for b in blocks[: info["anchor"]]:
                sch.transform_layout(b["block"], ("write", 0),
                                     lambda n_, c, h, w: (n_, c // fb, h, w, c % fb))  # fmt: skip
        n, f, y, x = sch.get_loops(out)
        fo, fi = sch.split(f, [None, fb])
        xo, xi = sch.split(x, [None, xb])
        sch.reorder(n, fo, y, xo, fi, xi)
        (cf, cx), reduction = tile_at(sch, conv, xo, (fb, xb))
        if knobs["vec"] == "f":
            vector_tile(sch, reduction, cx, cf)
            wb = sch.cache_read(conv, 1, "global")
            sch.transform_layout(wb, ("write", 0),
                                 lambda o, c, u, v: (o // fb, c, u, v, o % fb))  # fmt: skip
            sch.annotate(wb, "meta_schedule.layout_rewrite_preproc", True)
            sch.vectorize(fi) if fb > 1 else None
        else:
            vector_tile(sch, reduction, cf, cx)
            sch.vectorize(xi)
        _parallel_outer(sch, [n, fo, y])
        if reduction:
            sch.decompose_reduction(conv, reduction[0])
        for b in blocks[: info["anchor"]]:  # padding
            if knobs.get("pad") == "row":  # per parallel (channel block, row): stays in cache
                sch.compute_at(b["block"], sch.get_loops(out)[0])
            elif knobs.get("pad") == "inline":
                sch.compute_inline(b["block"])
            else:  # its own parallel loop nest over the whole input
                _parallel_outer(sch, sch.get_loops(b["block"]))
        return sch.mod["main"]


class Matmul:
    name = "matmul"

    def match(self, func: tirx.PrimFunc) -> dict:
        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
        index, mm = _anchor(blocks)
        if mm["reduce"] != 1 or mm["spatial"] < 2 or len(mm["reads"]) != 2:
            raise Decline("not a matmul block")
        if index != len(blocks) - 1 and blocks[-1]["extents"] != mm["extents"][: mm["spatial"]]:
            raise Decline("the output is not the matmul's shape")
        stmt = sch.get(mm["block"])
        j_var = stmt.iter_vars[mm["spatial"] - 1].var
        b_last = stmt.reads[1].region[-1].min
        transposed = not (isinstance(b_last, tirx.Var) and b_last.same_as(j_var))
        *batch, m, n = mm["extents"][: mm["spatial"]]
        k = mm["extents"][-1]
        b_param = _param_index(func, mm["reads"][1])
        return {
            "batch": batch, "m": m, "n": n, "k": k, "anchor": index,
            "transposed": transposed, "b_param": b_param,
            "flops": 2 * m * n * k * _prod(batch),
        }  # fmt: skip

    def _nbs(self, info: dict, lanes: int) -> list[int]:
        # a width that does not divide N is padded (pad_einsum), so every width is allowed
        return [nb for nb in (lanes // 2, lanes, 2 * lanes) if nb <= max(lanes, info["n"])]

    def space(self, info: dict, lanes: int) -> list[Knobs]:
        return [self.default(info, lanes)] + [
            {"mb": mb, "nb": nb, "kb": kb}
            for nb in self._nbs(info, lanes)
            for mb in sorted({min(info["m"], x) for x in (4, 6, 8, 12)})
            for kb in _divisors(info["k"], (1, 4))
        ]

    def default(self, info: dict, lanes: int) -> Knobs:
        # a vector width that divides N if there is one; else pad N to the full width
        nb = next(iter(_divisors(info["n"], (lanes, lanes // 2))), lanes)
        return {"mb": min(6, info["m"]), "nb": nb, "kb": 1}

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: Knobs) -> tirx.PrimFunc:
        pack = info["transposed"] and info["b_param"] in info.get("constants", ())
        if pack:
            func = func.with_attr("layout_free_buffers", [info["b_param"]])
        if info["n"] % knobs["nb"]:
            return _matmul_padded(func, info, knobs)
        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
        mm = blocks[info["anchor"]]["block"]
        if info["anchor"] == len(blocks) - 1:  # no epilogue: accumulate in a buffer, then copy
            out = sch.cache_write(mm, 0, "global")
        else:
            out = _inline_epilogue(sch, blocks, info["anchor"])["block"]
        mb, nb, kb = knobs["mb"], knobs["nb"], knobs["kb"]
        *batch, i, j = sch.get_loops(out)
        io, ii = sch.split(i, [None, mb])
        jo, ji = sch.split(j, [None, nb])
        sch.reorder(*batch, jo, io, ii, ji)
        (ci, cj), ks = tile_at(sch, mm, io, (mb, nb))  # ks empty when K = 1 (extent-1 dropped)
        ko, ki = sch.split(ks[0], [None, kb]) if ks else (None, None)
        sch.reorder(*(lp for lp in (ko, ki, ci, cj) if lp is not None))
        if cj is not None:
            sch.vectorize(cj)
        if ci is not None:
            sch.unroll(ci)
        if kb > 1 and ki is not None:
            sch.unroll(ki)
        if pack:  # B[j, k] -> [j/nb, k, j%nb]: contiguous vectors along j, folded at compile time
            wb = sch.cache_read(mm, 1, "global")
            sch.transform_layout(wb, ("write", 0), lambda n_, k_: (n_ // nb, k_, n_ % nb))
            sch.annotate(wb, "meta_schedule.layout_rewrite_preproc", True)
        if nb > 1:
            sch.vectorize(ji)
        _parallel_outer(sch, [*batch, jo, io])
        if ko is not None:
            sch.decompose_reduction(mm, ko)
        for b in blocks[: info["anchor"]]:
            _parallel_outer(sch, sch.get_loops(b["block"]))
        return sch.mod["main"]


class Generic:
    """Injective functions and plain reductions (pooling, mean, softmax, layer norm): each
    loop nest gets its leading loops parallel and, when it writes contiguously, a vectorized
    innermost loop. Multi-block injective chains are inlined into their last block first."""

    name = "generic"

    def match(self, func: tirx.PrimFunc) -> dict:
        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
        if not blocks:
            raise Decline("no blocks")
        return {"blocks": len(blocks), "flops": 0}

    def space(self, info: dict, lanes: int) -> list[Knobs]:
        return [{"vectorize": True}, {"vectorize": False}]

    def default(self, info: dict, lanes: int) -> Knobs:
        return {"vectorize": True}

    def apply(self, func: tirx.PrimFunc, info: dict, knobs: Knobs) -> tirx.PrimFunc:
        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
        if not any(b["reduction"] for b in blocks):
            for b in blocks[:-1]:
                with contextlib.suppress(s_tir.ScheduleError):
                    sch.compute_inline(b["block"])
        for b in _blocks(sch):
            loops = sch.get_loops(b["block"])
            spatial = loops[: b["spatial"]] if b["reduction"] else loops
            if not spatial:
                continue
            inner = spatial[-1]
            vector = (
                knobs["vectorize"] and not b["reduction"] and len(spatial) > 1
                and int(sch.get(inner).extent) >= 8
            )  # fmt: skip
            if vector:
                extent = int(sch.get(inner).extent)
                width = next((w for w in (16, 8) if extent % w == 0), 0)
                if width:
                    _, vec = sch.split(inner, [None, width])
                    sch.vectorize(vec)
            _parallel_outer(sch, spatial[:-1] if len(spatial) > 1 else spatial)
        return sch.mod["main"]


def _matmul_padded(func: tirx.PrimFunc, info: dict, knobs: Knobs) -> tirx.PrimFunc:
    """N not a multiple of the vector tile: pad N (pad_einsum copies B into a padded buffer and
    the result out of one), then tile the padded matmul in place."""
    mb, nb, kb = knobs["mb"], knobs["nb"], knobs["kb"]
    sch = s_tir.Schedule(func)
    blocks = _blocks(sch)
    mm = blocks[info["anchor"]]["block"]
    sch.pad_einsum(mm, [1] * len(info["batch"]) + [1, nb, 1])
    *batch, i, j, k = sch.get_loops(mm)
    io, ii = sch.split(i, [None, mb])
    jo, ji = sch.split(j, [None, nb])
    ko, ki = sch.split(k, [None, kb])
    sch.reorder(*batch, jo, io, ko, ki, ii, ji)
    sch.vectorize(ji)
    sch.unroll(ii)
    if kb > 1:
        sch.unroll(ki)
    _parallel_outer(sch, [*batch, jo, io])
    for b in _blocks(sch):  # the padding copies: B in, the result out
        if not b["reduction"]:
            loops = sch.get_loops(b["block"])
            _parallel_outer(sch, loops[:-1] or loops)
    sch.decompose_reduction(mm, ko)
    return sch.mod["main"]


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def tile_at(sch: s_tir.Schedule, block, loop, extents: tuple[int, ...]) -> tuple[list, list]:
    """``block`` computed at ``loop`` (the tile's outer loop): its tile loops, one per extent in
    block-variable order (None for an extent of 1), and the reduction loops below them."""
    sch.compute_at(block, loop)
    inner = _loops_below(sch, block, loop)
    tiled = sum(e > 1 for e in extents)
    return _tile_loops(sch, inner[:tiled], extents), inner[tiled:]


def vector_tile(sch: s_tir.Schedule, reduction: list, unrolled, vector) -> None:
    """The register tile of a micro-kernel: the reduction loops outermost, then the ``unrolled``
    tile loop, the ``vector`` one innermost (either may be None: an extent of 1)."""
    sch.reorder(*reduction, *(lp for lp in (unrolled, vector) if lp is not None))
    if vector is not None:
        sch.vectorize(vector)
    if unrolled is not None:
        sch.unroll(unrolled)


def _tile_loops(sch: s_tir.Schedule, spatial: list, extents: tuple[int, ...]) -> list:
    """Match the tile loops that compute_at created (in block-variable order, extent-1 loops
    omitted) to the tile extents; None for an extent of 1."""
    have = [int(sch.get(lp).extent) for lp in spatial]
    if have != [e for e in extents if e > 1]:
        raise Decline(f"tile loops {have} after compute_at, expected {list(extents)}")
    it = iter(spatial)
    return [next(it) if extent > 1 else None for extent in extents]


def _templates() -> tuple:
    # int8 templates first: they decline anything not u8 x s8 (int8_arm: s8 x s8 on arm64 sdot).
    # Then the convolution algorithms other than direct (edgec.lower.conv_algos), matched by
    # block name: Conv2d would also match an im2win/im2col reduction.
    # The I-ViT kernels (opaque, hand-written: their template regenerates them) come first.
    # NHWC convs (layout="nhwc") match by block name, before Conv2d (NCHW) would take them.
    from edgec.lower import conv_nhwc, im2col, im2win, int8_arm, ivit, norms, pool, winograd

    return (ivit.TEMPLATE, *int8.TEMPLATES, *int8_arm.TEMPLATES, im2win.TEMPLATE,
            im2col.TEMPLATE, winograd.TEMPLATE, conv_nhwc.TEMPLATE, Conv2d(), Matmul(),
            *norms.TEMPLATES, pool.TEMPLATE,
            Generic())  # fmt: skip


TEMPLATES: tuple = ()  # filled at the end of this module (the templates import its helpers)


def constant_params(mod) -> dict[str, set[int]]:
    """For each PrimFunc, the parameter indices bound to a Relax constant at every call site:
    only those may be re-laid-out at compile time."""
    import tvm
    from tvm import relax

    found: dict[str, set[int]] = {}

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(tvm_op("relax.call_tir")):
            callee, args = expr.args[0], expr.args[1]
            fields = list(args.fields) if isinstance(args, relax.Tuple) else [args]
            const = {i for i, a in enumerate(fields) if isinstance(a, tvm.ir.expr.Constant)}
            name = callee.name_hint
            found[name] = found[name] & const if name in found else const

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def tvm_op(name: str):
    import tvm

    return tvm.ir.Op.get(name)


def apply_knobs(template, func, info: dict, knobs: Knobs):
    """``func`` scheduled by ``template`` with ``knobs``, or by replaying a MetaSchedule trace
    when the knobs are one (``edgec.lower.metaschedule``: candidates of ``--search full``)."""
    if "metaschedule" in knobs:
        from edgec.lower import metaschedule

        return metaschedule.apply(func, knobs["metaschedule"])
    return template.apply(func, info, knobs)


def _label(knobs: Knobs) -> Knobs:
    if "metaschedule" not in knobs:
        return knobs
    from edgec.lower import metaschedule

    return metaschedule.label(knobs)


def apply_all(
    mod, lanes: int, choose: Callable[[str, dict, list[Knobs], Knobs], Knobs] | None = None
) -> tuple[object, list[dict]]:
    """Schedule every PrimFunc of ``mod``; returns the module and one record per kernel."""
    records = []
    constants = constant_params(mod)
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        record = {"kernel": gv.name_hint, "template": None}
        for template in TEMPLATES:
            try:
                info = template.match(func)
                info["constants"] = constants.get(gv.name_hint, set())
            except Decline as e:
                if not isinstance(e, NotMine):
                    record.setdefault("declined", []).append(f"{template.name}: {e}")
                continue
            except Exception as e:  # e.g. symbolic extents (data-dependent shapes)
                record.setdefault("declined", []).append(
                    f"{template.name}: cannot match: {type(e).__name__}: {str(e)[-300:]}"
                )
                continue
            try:
                default = template.default(info, lanes)
                knobs = (
                    choose(gv.name_hint, info, template.space(info, lanes), default)
                    if choose
                    else default
                )
                mod[gv] = apply_knobs(template, func, info, knobs)
            except (Decline, s_tir.ScheduleError) as e:
                record.setdefault("declined", []).append(f"{template.name}: {str(e)[-300:]}")
                continue
            except Exception as e:  # a template bug must cost speed, never the build
                record.setdefault("declined", []).append(
                    f"{template.name}: internal error {type(e).__name__}: {str(e)[-300:]}"
                )
                continue
            record.update(template=template.name, knobs=_label(knobs), flops=info["flops"])
            break
        records.append(record)
    return mod, records


TEMPLATES = _templates()
