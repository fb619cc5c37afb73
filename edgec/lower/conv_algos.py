"""Convolution algorithms as a kernel family: direct, im2col, im2win and Winograd.

The ``conv2d`` template (``schedules.Conv2d``) schedules TVM's own convolution (``direct``).
The other algorithms replace a Relax ``nn.conv2d`` call *before* operator fusion with a
``call_tir`` of their own TE computation (``im2col``/``im2win``: input transform + reduction;
``winograd``: input transform, batched GEMM, output transform). The call keeps the conv's
signature (input, constant weight -> NCHW output); the weight is transformed at compile time in
numpy (a new constant), and the PrimFunc carries ``op_pattern`` = out-elementwise-fusable, so
Relax fuses the bias / residual / ReLU epilogue into it exactly as into a direct conv. Each
algorithm has a schedule template (``TEMPLATES``) that recognizes its blocks by name in the
fused PrimFunc and schedules them from a small knob space.

Per conv layer the algorithm is forced (``--conv-algo``) or, with ``auto`` and a search, chosen
by measured latency: the model is lowered once per algorithm *variant* (``VARIANTS``), the
default knobs of every variant's kernels are timed (shared tuning cache and budget), each conv
layer takes the variant whose kernel is fastest, if its numerical error (Winograd) is within
``WINOGRAD_RTOL``, and the knob search then tunes the chosen kernels. Without a search,
``auto`` takes Winograd F(4x4) for big 3x3 stride-1 layers (``heuristic``, from the
measurements in docs/BENCHMARKS.md) and direct elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from edgec.errors import InvalidInputError

ALGOS = ("direct", "im2col", "im2win", "winograd")
CHOICES = (*ALGOS, "auto")
# what `auto` lowers and measures: (algorithm, TE-level option)
VARIANTS: tuple[tuple[str, object], ...] = (
    ("direct", None), ("im2col", None), ("im2win", "nhwc"), ("im2win", "nchw"),
    ("winograd", 4), ("winograd", 2),
)  # fmt: skip
DEFAULT_OPTION = {"direct": None, "im2col": None, "im2win": "nhwc", "winograd": 4}
WINOGRAD_RTOL = 1e-4  # max |winograd - exact| / max |exact| per layer, on its real weights
OUT_EWISE_FUSABLE = 4  # relax OpPatternKind: fuse the elementwise epilogue into the call


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution, NCHW input and OIHW weight (ONNX semantics)."""

    n: int
    cin: int
    h: int
    w: int
    cout: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    dtype: str = "float32"  # the input's: uint8/int8 for an int8 x int8 -> int32 conv
    pad_value: int = 0  # what the padding reads (an int8 conv's activation zero point)

    @property
    def integer(self) -> bool:
        return self.dtype != "float32"

    @property
    def cg(self) -> int:
        return self.cin // self.groups

    @property
    def og(self) -> int:
        return self.cout // self.groups

    @property
    def ho(self) -> int:
        return (self.h + self.pads[0] + self.pads[2] - self.dilation[0] * (self.kh - 1) - 1) // (
            self.stride[0]
        ) + 1

    @property
    def wo(self) -> int:
        return (self.w + self.pads[1] + self.pads[3] - self.dilation[1] * (self.kw - 1) - 1) // (
            self.stride[1]
        ) + 1

    @property
    def wspan(self) -> int:
        """Columns of an im2win window band: the padded input columns that some output reads
        (<= W + left + right), or, when the windows of neighbouring outputs do not overlap
        (K_w taps within one stride, e.g. 1x1 stride 2), only the ``W_o * K_w`` read ones."""
        if self.window_compact:
            return self.wo * self.kw
        return (self.wo - 1) * self.stride[1] + (self.kw - 1) * self.dilation[1] + 1

    @property
    def window_compact(self) -> bool:
        return (self.kw - 1) * self.dilation[1] < self.stride[1]

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.cg == 1

    @property
    def flops(self) -> int:
        return 2 * self.n * self.cout * self.ho * self.wo * self.cg * self.kh * self.kw

    def label(self) -> str:
        s, d = self.stride, self.dilation
        return (
            f"{self.cin}->{self.cout} k{self.kh}x{self.kw} s{s[0]}"
            + (f"x{s[1]}" if s[1] != s[0] else "")
            + (f" d{d[0]}" if d != (1, 1) else "")
            + (f" g{self.groups}" if self.groups > 1 else "")
            + f" {self.h}x{self.w}"
        )


def not_applicable(algo: str, spec: ConvSpec) -> str | None:
    """Why ``algo`` cannot compute ``spec`` (None: it can)."""
    if algo == "direct":
        return None
    if spec.integer and algo != "im2win":
        return f"{algo} is fp32 only (int8 convs: direct or im2win)"
    if spec.depthwise:
        return f"depthwise: {algo} has no reduction over channels to gain from (direct kernel)"
    if algo == "winograd":
        if (spec.kh, spec.kw, spec.stride, spec.dilation, spec.groups) != (3, 3, (1, 1), (1, 1), 1):
            return "winograd needs a 3x3 kernel, stride 1, dilation 1, groups 1"
        if spec.cin % 4:
            return "winograd needs input channels divisible by 4"
    return None


def transformed_bytes(algo: str, spec: ConvSpec, option=None) -> dict:
    """Bytes of the algorithm's transformed input and of all its workspace."""
    s, f = spec, 1 if spec.integer else 4
    if algo == "direct":
        padded = s.n * s.cin * (s.h + s.pads[0] + s.pads[2]) * (s.w + s.pads[1] + s.pads[3])
        return {"transformed_input_bytes": 0, "workspace_bytes": padded * f if any(s.pads) else 0}
    if algo == "im2col":
        col = s.n * s.cin * s.kh * s.kw * s.ho * s.wo * f
        return {"transformed_input_bytes": col, "workspace_bytes": col}
    if algo == "im2win":
        win = s.n * s.cin * s.ho * s.wspan * s.kh * f
        return {"transformed_input_bytes": win, "workspace_bytes": win}
    if algo == "winograd":
        m = option or DEFAULT_OPTION["winograd"]
        alpha, nh, nw = m + 2, -(-s.ho // m), -(-s.wo // m)
        tiles = s.n * nh * nw
        packed = s.n * s.cin * (nh * m + 2) * (nw * m + 2) * f
        v, mm = alpha * alpha * tiles * s.cin * f, alpha * alpha * tiles * s.cout * f
        return {"transformed_input_bytes": v, "workspace_bytes": packed + v + mm}
    raise KeyError(algo)


# --------------------------------------------------------------------------------------------
# the Relax rewrite


def _conv_spec(call) -> tuple[ConvSpec, np.ndarray] | None:
    """The spec and constant weight of a Relax conv2d call we can replace (else None): fp32, or
    u8/s8 x s8 -> s32 (the integer convs of ``edgec.lower.qdq``)."""
    import tvm

    attrs = call.attrs
    if (attrs.data_layout, attrs.kernel_layout) != ("NCHW", "OIHW"):
        return None
    if attrs.out_layout not in ("NCHW", "") or not isinstance(call.args[1], tvm.ir.expr.Constant):
        return None
    x_ty, w_ty = call.args[0].ty, call.args[1].ty
    try:
        xs = [int(d) for d in x_ty.shape]
    except (TypeError, AttributeError):
        return None  # symbolic shape
    dtype, out = str(x_ty.dtype), str(attrs.out_dtype or "")
    if dtype in ("uint8", "int8"):
        if str(w_ty.dtype) != "int8" or out != "int32":
            return None
    elif str(w_ty.dtype) != dtype or out not in ("", dtype):
        return None
    weight = call.args[1].value.numpy()
    pads = tuple(int(p) for p in attrs.padding)
    if len(pads) == 2:
        pads = (pads[0], pads[1], pads[0], pads[1])
    spec = ConvSpec(
        n=xs[0], cin=xs[1], h=xs[2], w=xs[3], cout=weight.shape[0],
        kh=weight.shape[2], kw=weight.shape[3],
        stride=tuple(int(v) for v in attrs.strides), pads=pads,
        dilation=tuple(int(v) for v in attrs.dilation), groups=int(attrs.groups), dtype=dtype,
    )  # fmt: skip
    return spec, weight


def _emit(builder, algo: str, option, x, weight: np.ndarray, spec: ConvSpec):
    from tvm import relax

    from edgec.lower import im2col, im2win, winograd

    module = {"im2col": im2col, "im2win": im2win, "winograd": winograd}[algo]
    packed, compute = module.relax_parts(spec, weight, option)
    return builder.call_te(
        compute, x, relax.const(packed),
        primfunc_name_hint=f"{algo}_conv2d",
        primfunc_attrs={"op_pattern": OUT_EWISE_FUSABLE},
    )  # fmt: skip


Assign = Callable[[int, ConvSpec], tuple[str, object]]


def rewrite(mod, assign: Assign) -> tuple[object, list[dict]]:
    """Replace the Relax conv2d calls of ``mod`` (before legalization) by the algorithm that
    ``assign(layer_index, spec) -> (algo, option)`` gives; returns the module and one record
    per conv layer (in dataflow order): spec, algorithm, why it fell back to direct."""
    import tvm
    from tvm import relax

    conv_op = tvm.ir.Op.get("relax.nn.conv2d")
    layers: list[dict] = []

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(conv_op)):
                return call
            parsed = _conv_spec(call)
            if parsed is None:
                reason = "not a static NCHW conv with a constant weight"
                layers.append({"layer": len(layers), "spec": None, "algo": "direct",
                               "fallback": reason})  # fmt: skip
                return call
            spec, weight = parsed
            data, folded = call.args[0], _fold_pad(self, call.args[0], spec)
            if folded is not None:  # an int8 conv's zero-point padding, folded into im2win
                data, spec = folded
            algo, option = assign(len(layers), spec)
            record = {"layer": len(layers), "spec": spec, "algo": algo, "option": option,
                      "_weight": weight}  # fmt: skip
            reason = not_applicable(algo, spec)
            layers.append(record)
            if reason is not None:
                record.update(algo="direct", option=None, fallback=reason)
            if record["algo"] == "direct":
                if folded is None:
                    return call
                return self.builder_.call_te(
                    lambda x, w: direct_compute(x, w, spec), data, relax.const(weight, "int8"),
                    primfunc_name_hint="conv2d", primfunc_attrs={"op_pattern": OUT_EWISE_FUSABLE},
                )  # fmt: skip
            return _emit(self.builder_, algo, option, data, weight, spec)

    rewriter = Rewriter(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get(), layers


def padded(x, spec: ConvSpec, n, c, hh, ww):
    """``x`` at padded coordinates (hh, ww), ``spec.pad_value`` outside the input: the padding
    folded into a TE read (no padded copy of the input)."""
    from tvm import tirx

    h, w = hh - spec.pads[0], ww - spec.pads[1]
    inside = tirx.all(h >= 0, h < spec.h, w >= 0, w < spec.w)
    return tirx.if_then_else(inside, x[n, c, h, w], tirx.const(spec.pad_value, x.dtype))


def direct_compute(x, w, spec: ConvSpec):
    """The direct integer convolution with its (zero-point) padding in the same function: the
    int8 templates inline it into their input copy instead of a separate padded tensor."""
    from tvm import te

    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    p = spec.pads
    shape = (spec.n, spec.cin, spec.h + p[0] + p[2], spec.w + p[1] + p[3])
    pad = te.compute(shape, lambda n, c, hh, ww: padded(x, spec, n, c, hh, ww), name="pad_temp")
    c = te.reduce_axis((0, spec.cg), "rc")
    r = te.reduce_axis((0, spec.kh), "ry")
    q = te.reduce_axis((0, spec.kw), "rx")

    def group(o):
        return o // spec.og * spec.cg if spec.groups > 1 else 0

    return te.compute(
        (spec.n, spec.cout, spec.ho, spec.wo),
        lambda n, o, i, j: te.sum(
            pad[n, group(o) + c, i * sh + r * dh, j * sw + q * dw].astype("int32")
            * w[o, c, r, q].astype("int32"),
            axis=[c, r, q],
        ),
        name="conv2d_nchw",
    )


def _fold_pad(mutator, data, spec: ConvSpec):
    """An integer conv without padding that reads ``nn.pad(x)`` (spatial, constant: how
    ``qdq`` pads with the zero point): ``(x, spec with those pads and that value)``, else None.
    The padding then goes into the conv's own function (im2win's window copy, the direct
    kernels' input copy): no padded tensor between kernels. Not for a thin dense input
    (C % 4, e.g. an RGB stem): ``int8_conv2d`` reads its words of 4 taps from the padded
    tensor as it is."""
    import tvm

    if not spec.integer or any(spec.pads) or (spec.groups == 1 and spec.cin % 4):
        return None
    pad = mutator.lookup_binding(data) if isinstance(data, tvm.relax.Var) else None
    if not (isinstance(pad, tvm.relax.Call) and getattr(pad.op, "name", "") == "relax.nn.pad"):
        return None
    widths = [int(v) for v in pad.attrs.pad_width]
    if str(pad.attrs.pad_mode) != "constant" or len(widths) != 8 or any(widths[:4]):
        return None
    x = pad.args[0]
    top, bottom, left, right = widths[4:]
    return x, dataclasses.replace(
        spec, h=spec.h - top - bottom, w=spec.w - left - right, pads=(top, left, bottom, right),
        pad_value=int(float(pad.attrs.pad_value)),
    )  # fmt: skip


def parse(conv_algo: str) -> tuple[str, object]:
    """``auto``, an algorithm (its default option) or a variant label (``im2win-nchw``,
    ``winograd-2``) -> (algorithm, option)."""
    if conv_algo == "auto" or conv_algo in ALGOS:
        return conv_algo, DEFAULT_OPTION.get(conv_algo)
    for algo, option in VARIANTS:
        if _variant_label(algo, option) == conv_algo:
            return algo, option
    names = [*CHOICES, *(_variant_label(a, o) for a, o in VARIANTS if o is not None)]
    raise InvalidInputError(
        f"unknown convolution algorithm {conv_algo!r}: use one of {', '.join(names)}"
    )


def check_choice(conv_algo: str) -> None:
    parse(conv_algo)


def heuristic(_index: int, spec: ConvSpec) -> tuple[str, object]:
    """``auto`` without a search (x86 targets): Winograd F(4x4) where bench/conv_algos.py
    measured it faster than direct on every layer (3x3 stride 1, >= 64 channels in and out,
    output >= 14x14; 1.2-3.6x), else direct."""
    big = min(spec.cin, spec.cout) >= 64 and spec.ho * spec.wo >= 14 * 14
    if big and not_applicable("winograd", spec) is None:
        return "winograd", 4
    return "direct", None


def forced(conv_algo: str, option=None) -> Assign:
    opt = DEFAULT_OPTION[conv_algo] if option is None else option
    return lambda _i, _spec: (conv_algo, opt)


# --------------------------------------------------------------------------------------------
# numerics: the exact convolution, for the Winograd error check and the tests


def reference_conv(x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Convolution (ONNX semantics) by summing over the kernel taps: in float64, or exactly in
    int64 for integer inputs (the int8 reference)."""
    acc = np.int64 if x.dtype.kind in "iu" else np.float64
    t, left, b, r = spec.pads
    xp = np.pad(x.astype(acc), ((0, 0), (0, 0), (t, b), (left, r)))
    out = np.zeros((spec.n, spec.cout, spec.ho, spec.wo), acc)
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    w64 = weight.astype(acc)
    for g in range(spec.groups):
        xs = xp[:, g * spec.cg : (g + 1) * spec.cg]
        ws = w64[g * spec.og : (g + 1) * spec.og]
        for i in range(spec.kh):
            for j in range(spec.kw):
                patch = xs[:, :, i * dh : i * dh + sh * (spec.ho - 1) + 1 : sh,
                           j * dw : j * dw + sw * (spec.wo - 1) + 1 : sw]  # fmt: skip
                out[:, g * spec.og : (g + 1) * spec.og] += np.einsum(
                    "nchw,oc->nohw", patch, ws[:, :, i, j]
                )
    return out


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    scale = max(float(np.abs(want).max()), 1e-30)
    return float(np.abs(got.astype(np.float64) - want).max()) / scale


def rounds_up(value: float) -> float:
    return float(f"{value:.3g}") if value and math.isfinite(value) else value


# --------------------------------------------------------------------------------------------
# lowering with a conv algorithm plan (the hook of edgec.lower.build)


def _weight_key(array: np.ndarray) -> str:
    import hashlib

    return f"{array.shape}:{hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()}"


def _conv_kernels(mod) -> dict[str, str]:
    """weight key -> name of the kernel (fused PrimFunc) whose call takes that constant."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    found: dict[str, str] = {}

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            args = expr.args[1]
            fields = list(args.fields) if isinstance(args, relax.Tuple) else [args]
            for a in fields:
                if isinstance(a, tvm.ir.expr.Constant) and len(a.ty.shape) >= 2:
                    found.setdefault(_weight_key(a.value.numpy()), expr.args[0].name_hint)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def _variant_label(algo: str, option) -> str:  # noqa: D103
    return algo if option is None else f"{algo}-{option}"


class Plan:
    """Which algorithm each conv layer of a model uses, and the lowering that applies it.

    ``lower(pre, zero, tune)`` takes the Relax module before the ``zero`` pipeline and returns
    the module after it plus the ``choose`` hook for ``schedules.apply_all``; ``annotate``
    adds each conv layer's algorithm record to the report's kernel records."""

    def __init__(self, conv_algo: str, lanes: int, target: dict, log=None):
        check_choice(conv_algo)
        self.conv_algo, self.lanes, self.target = conv_algo, lanes, target
        self.log = log or (lambda _m: None)
        self.layers: list[dict] = []
        self.kernel_of: dict[str, list[int]] = {}  # final kernel name -> layer indices
        self.tasks: dict = {}  # auto: "variant/kernel" -> measure.Task, every variant's kernels

    def lower(self, pre, zero, tune=None):
        from edgec.lower import measure

        if self.conv_algo == "auto" and tune is not None:
            return self._auto(pre, zero, tune)
        algo, option = parse(self.conv_algo)
        if algo == "auto":  # the heuristic was measured on x86 only
            x86 = str(self.target.get("mtriple", "")).startswith("x86_64")
            assign = heuristic if x86 else forced("direct")
        else:
            assign = forced(algo, option)
        mod, self.layers = rewrite(pre, assign)
        mod = zero(mod)
        choose = tune(measure.kernel_tasks(mod, self.lanes), self.target) if tune else None
        self._map(mod)
        return mod, choose

    def _map(self, mod) -> None:
        """Final kernel name of each conv layer (found by its weight constant)."""
        for i, name in _layer_kernels(mod, self.layers).items():
            self.layers[i]["kernel"] = name
            self.kernel_of.setdefault(name, []).append(i)

    def _auto(self, pre, zero, tune):
        """Lower every variant, time them, pick per layer, tune the chosen kernels.

        With ``edgec.search.Search`` the search has two phases on one budget: ``screen``
        times the default knobs of every variant's kernel, layers biggest first, and each
        layer takes the fastest variant; the knob search then runs on the chosen model's
        kernels alone (spreading the knob search over every variant spent the budget on
        kernels that lose anyway). Another ``tune`` hook searches all variants together."""
        import dataclasses as dc

        from edgec.lower import measure

        tasks, variants = [], {}
        for algo, option in VARIANTS:
            label = _variant_label(algo, option)
            mod_v, layers = rewrite(pre, forced(algo, option))
            if algo != "direct" and all(lay["algo"] == "direct" for lay in layers):
                continue  # applies to no layer
            mod_v = zero(mod_v)
            kernels = _layer_kernels(mod_v, layers)
            first = {}
            for i, name in sorted(kernels.items(), reverse=True):
                first[name] = i
            # "c007:winograd-4/fused_..": kernels of equal FLOPs are searched in layer order,
            # all variants of a layer together (the search breaks ties by name)
            v_tasks = measure.kernel_tasks(mod_v, self.lanes)
            names = {t.name: f"{label}/{t.name}" for t in v_tasks}
            names.update({k: f"c{i:03d}:{label}/{k}" for k, i in first.items()})
            tasks += [dc.replace(t, name=names[t.name]) for t in v_tasks]
            variants[label] = {
                "algo": algo, "option": option, "layers": layers,
                "kernels": {i: names.get(k, f"{label}/{k}") for i, k in kernels.items()},
            }  # fmt: skip
        self.tasks = {t.name: t for t in tasks}
        self.log(f"conv algorithms: searching {len(variants)} variants ({', '.join(variants)})")
        two_phase = hasattr(tune, "screen")  # edgec.search.Search
        if two_phase:  # time each variant's default, pick, then tune the chosen kernels only
            tune.screen(_layer_major(tasks, variants), self.target)
            search = tune
        else:  # a plain tune hook: every variant's kernels searched together
            search = getattr(tune(tasks, self.target), "__self__", None)  # choose's owner
        self.layers = self._choose(variants, search)
        choice = {lay["layer"]: (lay["algo"], lay.get("option")) for lay in self.layers}
        mod, _ = rewrite(pre, lambda i, spec: choice.get(i, ("direct", None)))
        mod = zero(mod)
        final = measure.kernel_tasks(mod, self.lanes)
        self._map(mod)
        if two_phase:
            return mod, tune(final, self.target)
        if search is not None and hasattr(search, "adopt"):
            search.adopt(final)
        by_workload = {w.task.workload: w for w in getattr(search, "workloads", [])}
        wanted = {t.name: t.workload for t in final}

        def choose(name, info, space, default):
            w = by_workload.get(wanted.get(name))
            if w is None or w.best is None:
                return default
            if any(measure.canonical(k) == measure.canonical(w.best) for k in [default, *space]):
                return w.best
            return default

        return mod, choose

    def _choose(self, variants: dict, search) -> list[dict]:
        chosen = []
        for lay in variants["direct"]["layers"]:
            i, spec = lay["layer"], lay["spec"]
            if spec is None:  # not an fp32 conv this module rewrites (e.g. an int8 one)
                chosen.append({**lay, "tried": []})
                continue
            tried = []
            for v in variants.values():
                if v["layers"][i]["algo"] != v["algo"]:
                    continue  # fell back to direct in this variant
                kernel = v["kernels"].get(i)
                entry = {"algo": v["algo"], "option": v["option"], "kernel": kernel,
                         "ms": _score(search, kernel) if kernel else None,
                         **transformed_bytes(v["algo"], spec, v["option"])}  # fmt: skip
                if v["algo"] == "winograd":
                    from edgec.lower import winograd

                    err = winograd.layer_error(spec, lay["_weight"], v["option"])
                    entry["error"] = rounds_up(err)
                    if err > WINOGRAD_RTOL:
                        entry["rejected"] = f"error {err:.2g} > {WINOGRAD_RTOL:g}"
                tried.append(entry)
            ok = [t for t in tried if t["ms"] is not None and "rejected" not in t]
            best = min(ok, key=lambda t: t["ms"]) if ok else {"algo": "direct", "option": None}
            chosen.append({**lay, "algo": best["algo"], "option": best["option"],
                           "tried": tried})  # fmt: skip
        return chosen

    def annotate(self, records: list[dict]) -> None:
        """Add ``conv`` (layers, algorithm, bytes, every algorithm tried with its time) to the
        kernel records of conv layers."""
        for rec in records:
            layers = [self.layers[i] for i in self.kernel_of.get(rec["kernel"], [])]
            if not layers:
                continue
            lay, spec = layers[0], layers[0].get("spec")
            rec["conv"] = {
                "layers": [x["layer"] for x in layers],
                "shape": spec.label() if spec else None,
                "algorithm": lay["algo"],
                **({"option": lay["option"]} if lay.get("option") is not None else {}),
                **({"fallback": lay["fallback"]} if lay.get("fallback") else {}),
                **(transformed_bytes(lay["algo"], spec, lay.get("option")) if spec else {}),
                **({"tried": lay["tried"]} if lay.get("tried") else {}),
            }

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for lay in self.layers:
            counts[lay["algo"]] = counts.get(lay["algo"], 0) + 1
        return {"conv_algo": self.conv_algo, "layers": len(self.layers), "chosen": counts}


def _layer_kernels(mod, layers: list[dict]) -> dict[int, str]:
    """layer index -> the kernel (fused PrimFunc) that computes it in ``mod``."""
    keys = _conv_kernels(mod)
    out = {}
    for lay in layers:
        if lay.get("_weight") is None:
            continue
        packed = _packed_weight(lay["algo"], lay.get("option"), lay["spec"], lay["_weight"])
        name = keys.get(_weight_key(packed))
        if name is not None:
            out[lay["layer"]] = name
    return out


def _packed_weight(algo: str, option, spec: ConvSpec, weight: np.ndarray) -> np.ndarray:
    if algo == "direct":
        return weight
    from edgec.lower import im2col, im2win, winograd

    module = {"im2col": im2col, "im2win": im2win, "winograd": winograd}[algo]
    return module.relax_parts(spec, weight, option)[0]


def _score(search, name: str) -> float | None:
    if search is None or not hasattr(search, "score"):
        return None
    ms = search.score(name)
    return round(ms, 4) if math.isfinite(ms) else None


def _layer_major(tasks: list, variants: dict) -> list:
    """The screening order: conv layers biggest first, each with all its variants (direct
    first), then the other kernels; a budget cut then leaves small layers on direct."""
    by_name = {t.name: t for t in tasks}
    layers = sorted(
        {i for v in variants.values() for i in v["kernels"]},
        key=lambda i: -(variants["direct"]["layers"][i]["spec"].flops
                        if variants["direct"]["layers"][i].get("spec") else 0),
    )  # fmt: skip
    order = [by_name[v["kernels"][i]] for i in layers for v in variants.values()
             if v["kernels"].get(i) in by_name]  # fmt: skip
    seen = {t.name for t in order}
    return order + [t for t in tasks if t.name not in seen]
