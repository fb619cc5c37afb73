"""extract_conv: replace an affine, translation-equivariant subgraph by the one Conv it computes.

Probe-and-verify re-parameterization (docs rewrites.md 2.9), for Diverse Branch Blocks and other
"affine soups" where pattern matching is impractical (the BNAndPad ScatterND/Transpose soup of
both torch exporters, section 1.2).

1. Regions. A node is *linear* when it is affine in its non-constant inputs and cannot break
   translation equivariance by itself: Conv with constant weights, inference BatchNormalization,
   Add/Sub/Sum of region tensors or of a per-axis constant, Mul/Div by a per-axis constant, Neg,
   AveragePool (no ceil mode; pads counted), Pad with a constant value, and the data movement
   ScatterND/Slice/Concat/Transpose/Reshape/Squeeze/Unsqueeze/Identity whose other operands are
   constants. Connected components of linear nodes are cut until each depends on exactly one
   outside tensor X (a node mixing two outside tensors, e.g. a residual Add, is left out and
   splits the component). A region is extracted only if exactly one of its values Y is used
   outside it, X and Y are 4-D float32 (static C, H, W) and it holds a Conv and either a second
   Conv or a branch; otherwise it is left to the pattern passes (or declined with the reason).
   A maximal region that fails (e.g. two blocks stacked without an activation: padding between
   them makes the whole no single conv, and a bigger kernel may cost more) is split at its cut
   values (every path from X to Y passes through them) and each segment is tried on its own.
2. Extraction, in onnxruntime (graph optimizations off) on the region cut out as its own model:
   the response to a zero input gives the bias (at an interior pixel) and the baseline; one
   random channel mix per stride phase, placed at the image centre, gives the receptive field
   (kernel extent and top/left padding); unit impulses, many per run (spaced so that their
   output footprints do not overlap, in every batch slot), give ``W[:, c, u, v]`` as baseline-
   subtracted responses read at the mirrored offsets. Bottom/right pads follow from the output
   shape; a block-diagonal kernel becomes a grouped conv (largest exact group count).
3. Checks: the extracted conv may not cost more multiply-accumulates than the region's convs
   (merging a linear bottleneck would); old and new subgraph run on seeded random inputs (full
   images: borders included, zero-mean and offset) and the rewrite is kept only if max abs
   error <= ``tolerance`` x max |old|, otherwise the region is declined with the measured error.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from edgec.passes._ir import bn_affine, const, remove_unused, to_ir, to_proto
from edgec.passes.base import PassResult

STAT = "regions_extracted"

# Ops that are affine in their non-constant inputs when the other operands are constants:
# only input 0 may be non-constant / any inputs may / exactly one input may.
_DATA_ONLY = {
    "Conv",
    "BatchNormalization",
    "AveragePool",
    "Pad",
    "Slice",
    "Transpose",
    "Neg",
    "Identity",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Div",
}
_ANY_DYNAMIC = {"Add", "Sub", "Sum", "Concat", "ScatterND"}
_ONE_DYNAMIC = {"Mul"}


class _Decline(Exception):
    pass


@dataclasses.dataclass
class _Region:
    nodes: list[ir.Node]  # graph order
    x: ir.Value
    y: ir.Value
    n_conv: int

    def describe(self) -> str:
        return (
            f"region {self.x.name} -> {self.y.name} ({len(self.nodes)} nodes, {self.n_conv} Conv)"
        )


@dataclasses.dataclass
class _ConvSpec:
    weight: np.ndarray  # [O, C/group, KH, KW] float32
    bias: np.ndarray  # [O] float32
    pads: list[int]  # ONNX order: top, left, bottom, right
    strides: list[int]
    group: int

    @property
    def attributes(self) -> dict:
        return {
            "kernel_shape": [int(k) for k in self.weight.shape[2:]],
            "pads": [int(p) for p in self.pads],
            "strides": [int(s) for s in self.strides],
            "group": int(self.group),
            "dilations": [1, 1],
        }


class ExtractConv:
    name = "extract_conv"
    summary = "probe-and-verify: affine translation-equivariant subgraphs (DBB soups) -> one Conv"

    def __init__(self, *, tolerance: float = 1e-4, seed: int = 0) -> None:
        self.tolerance = tolerance
        self.seed = seed

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        ir_model = to_ir(_with_shapes(model))
        graph = ir_model.graph
        regions, declined = _find_regions(graph)
        accepted: list[tuple[_Region, _ConvSpec]] = []
        for region in regions:
            try:
                accepted.append((region, self._extract(ir_model, region)))
                continue
            except _Decline as e:
                declined.append(f"{self.name}: {region.describe()}: {e}")
            for segment in _split(region):
                try:
                    accepted.append((segment, self._extract(ir_model, segment)))
                except _Decline as e:
                    declined.append(f"{self.name}: {segment.describe()}: {e}")
        if not accepted:
            return PassResult(model, {STAT: 0}, declined)
        # last segment first: a segment's input is still the value the next one produced
        order = {node: i for i, node in enumerate(graph)}
        for region, spec in sorted(accepted, key=lambda rs: -order[rs[0].y.producer()]):
            _replace(graph, region, spec)
        remove_unused(ir_model)
        return PassResult(to_proto(ir_model), {STAT: len(accepted)}, declined)

    # -- extraction ------------------------------------------------------------------------
    def _extract(self, model: ir.Model, region: _Region) -> _ConvSpec:
        from edgec.verify import ort_session

        x_shape = _static_shape(region.x)
        sub = _submodel(model, region)
        try:
            sess = ort_session(sub)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises plain RuntimeErrors
            raise _Decline(f"onnxruntime cannot run the region: {_first_line(e)}") from e
        x_name, y_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return sess.run([y_name], {x_name: x})[0]

        try:
            spec = _probe(run, x_shape, self.seed)
            cost, region_cost = _macs(spec, region)
            if cost > region_cost:
                kh, kw = spec.weight.shape[2:]
                raise _Decline(
                    f"the extracted {kh}x{kw} conv (group {spec.group}) costs {cost} "
                    f"MACs, more than the region's convs ({region_cost})"
                )
            err, scale = _verify(run, spec, x_shape, sub, self.seed)
        except _Decline:
            raise
        except Exception as e:  # noqa: BLE001
            raise _Decline(f"probing failed: {_first_line(e)}") from e
        if not err <= self.tolerance * scale:
            raise _Decline(
                f"extracted conv does not match: max abs err {err:.3g} > "
                f"{self.tolerance:g} x output scale {scale:.3g}"
            )
        return spec


# -- regions ----------------------------------------------------------------------------------
def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes are a convenience; regions need only X's shape
        return model


def _dynamic(node: ir.Node) -> list[tuple[int, ir.Value]]:
    return [(i, v) for i, v in enumerate(node.inputs) if v is not None and const(v) is None]


def _per_axis(node: ir.Node) -> bool:
    """Every constant operand varies along at most one axis (per-channel, scalar)."""
    for v in node.inputs:
        c = const(v) if v is not None else None
        if c is not None and sum(d > 1 for d in c.shape) > 1:
            return False
    return True


def _ints(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _is_linear(node: ir.Node) -> bool:
    if node.domain != "" or len(node.outputs) != 1:
        return False
    op, dyn = node.op_type, _dynamic(node)
    if not dyn:
        return False
    idx = [i for i, _ in dyn]
    if op in _DATA_ONLY and idx != [0]:
        return False
    if op in _ONE_DYNAMIC and len(idx) != 1:
        return False
    if op not in _DATA_ONLY | _ANY_DYNAMIC | _ONE_DYNAMIC:
        return False
    if op == "Conv":
        return _ints(node, "auto_pad", "NOTSET") in ("NOTSET", "VALID")
    if op == "BatchNormalization":
        return bn_affine(node) is not None
    if op in ("Add", "Sub", "Sum", "Mul", "Div"):
        return _per_axis(node)
    if op == "AveragePool":
        pads = _ints(node, "pads", [0])
        counted = _ints(node, "count_include_pad", 0) == 1 or not any(pads)
        return (
            counted
            and _ints(node, "ceil_mode", 0) == 0
            and _ints(node, "auto_pad", "NOTSET") in ("NOTSET", "VALID")
        )
    if op == "Pad":
        return _ints(node, "mode", "constant") == "constant"
    if op == "ScatterND":
        return 1 not in idx and _ints(node, "reduction", "none") == "none"
    return True


def _find_regions(graph: ir.Graph) -> tuple[list[_Region], list[str]]:
    order = {node: i for i, node in enumerate(graph)}
    cand = {node for node in graph if _is_linear(node)}
    while True:
        comps = _components(cand, order)
        cut = set()
        for comp in comps:
            deps: dict[ir.Node, set[ir.Value]] = {}
            for node in comp:
                d: set[ir.Value] = set()
                for _, v in _dynamic(node):
                    p = v.producer()
                    d |= deps.get(p, {v})
                deps[node] = d
                # cut where two outside tensors first meet (their consumers inherit the mix)
                if len(d) > 1 and not any(
                    len(deps.get(v.producer(), ())) > 1 for _, v in _dynamic(node)
                ):
                    cut.add(node)
        if not cut:
            break
        cand -= cut

    regions, declined = [], []
    graph_outputs = set(graph.outputs)
    for comp in comps:
        inside = set(comp)
        (x,) = {v for node in comp for _, v in _dynamic(node) if v.producer() not in inside}
        n_conv = _worth_it(comp)
        if not n_conv:
            continue  # a single Conv (+ affine) is the pattern passes' job
        escaping = [
            out
            for node in comp
            for out in node.outputs
            if out in graph_outputs or any(u.node not in inside for u in out.uses())
        ]
        desc = f"region of {len(comp)} nodes on {x.name} ({n_conv} Conv)"
        if len(escaping) != 1:
            names = ", ".join(v.name or "?" for v in escaping) or "none"
            declined.append(
                f"extract_conv: {desc}: not single-output, values escape the region: {names}"
            )
            continue
        (y,) = escaping
        problem = _io_problem(x, y)
        if problem:
            declined.append(f"extract_conv: {desc}: {problem}")
            continue
        regions.append(_Region(comp, x, y, n_conv))
    return regions, declined


def _worth_it(nodes: Sequence[ir.Node]) -> int:
    """The number of Convs if ``nodes`` hold a Conv and a second Conv or a branch, else 0."""
    n_conv = sum(node.op_type == "Conv" for node in nodes)
    consumed = [v for node in nodes for _, v in _dynamic(node)]
    branched = len(consumed) != len(set(consumed)) or any(len(_dynamic(n)) > 1 for n in nodes)
    return n_conv if n_conv >= 2 or (n_conv == 1 and branched) else 0


def _split(region: _Region) -> list[_Region]:
    """The worthwhile segments of ``region`` between its cut values: values v such that every
    node outside v's ancestors reads only v or non-ancestors (so all paths pass through v)."""
    inside = set(region.nodes)
    ancestors: dict[ir.Node, set[ir.Node]] = {}
    for node in region.nodes:
        anc = {node}
        for _, v in _dynamic(node):
            if v.producer() in inside:
                anc |= ancestors[v.producer()]
        ancestors[node] = anc
    cuts = []
    for node in region.nodes:
        v, anc = node.outputs[0], ancestors[node]
        if v is region.y:
            continue
        if all(
            u is v or (u.producer() in inside and u.producer() not in anc)
            for m in region.nodes
            if m not in anc
            for _, u in _dynamic(m)
        ):
            cuts.append(node)
    segments, done, x = [], set(), region.x
    for end in [*cuts, region.y.producer()]:
        nodes = [n for n in region.nodes if n in ancestors[end] and n not in done]
        done |= ancestors[end]
        y = end.outputs[0]
        n_conv = _worth_it(nodes)
        if n_conv and _io_problem(x, y) is None:
            segments.append(_Region(nodes, x, y, n_conv))
        x = y
    return segments if cuts else []  # without cuts the only segment is the region


def _components(cand: set[ir.Node], order: dict[ir.Node, int]) -> list[list[ir.Node]]:
    parent = {node: node for node in cand}

    def find(n: ir.Node) -> ir.Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node in cand:
        for _, v in _dynamic(node):
            p = v.producer()
            if p in cand:
                parent[find(p)] = find(node)
    groups: dict[ir.Node, list[ir.Node]] = {}
    for node in sorted(cand, key=order.__getitem__):
        groups.setdefault(find(node), []).append(node)
    return list(groups.values())


def _io_problem(x: ir.Value, y: ir.Value) -> str | None:
    for role, v in (("input", x), ("output", y)):
        if v.dtype != ir.DataType.FLOAT:
            return f"{role} {v.name} is not float32"
        if v.shape is not None and len(v.shape) != 4:
            return f"{role} {v.name} is not 4-D (NCHW)"
    if x.shape is None or not all(isinstance(d, int) for d in list(x.shape)[1:]):
        return f"input {x.name} has no static C, H, W"
    return None


def _static_shape(x: ir.Value) -> tuple[int, int, int, int]:
    n, c, h, w = list(x.shape)
    return (n if isinstance(n, int) else 1, c, h, w)


def _submodel(model: ir.Model, region: _Region) -> onnx.ModelProto:
    graph = ir.convenience.extract(model.graph, [region.x], [region.y])
    return ir.serde.serialize_model(ir.Model(graph, ir_version=model.ir_version))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# -- probing ----------------------------------------------------------------------------------
def _axis_positions(size_in: int, size_out: int, s: int, dmin: int, dmax: int, a: int) -> list:
    """Impulse positions of phase ``a`` whose whole output footprint is inside the image,
    spaced so that footprints do not overlap."""
    step = s * ((dmax - dmin) // s + 1)
    out = []
    for p in range(a, size_in, s):
        first, last = -((dmax - p) // s), (p - dmin) // s  # ceil((p-dmax)/s), floor((p-dmin)/s)
        if first >= 0 and last <= size_out - 1 and (not out or p - out[-1] >= step):
            out.append(p)
    return out


def _geometry(dmin: int, dmax: int, size_in: int, size_out: int, s: int) -> tuple[int, int, int]:
    """Kernel size and (begin, end) pads of one spatial axis from its offset range."""
    pad0 = max(0, -dmin)
    k = dmax + pad0 + 1
    pad1 = (size_out - 1) * s + k - size_in - pad0
    if pad1 < 0:  # the region never reads the last rows: grow the kernel with zeros
        k, pad1 = k - pad1, 0
    return k, pad0, pad1


def _probe(run: Callable, x_shape: Sequence[int], seed: int) -> _ConvSpec:
    n, c, h, w = x_shape
    zero = np.zeros(x_shape, np.float32)
    y0 = run(zero).astype(np.float64)
    if y0.ndim != 4 or y0.shape[0] != n:
        raise _Decline(f"output shape {list(y0.shape)} is not NCHW with batch {n}")
    o, ho, wo = y0.shape[1:]
    if ho > h or wo > w:
        raise _Decline(f"output {ho}x{wo} larger than input {h}x{w} (upsampling)")
    sh, sw = max(1, round(h / ho)), max(1, round(w / wo))

    # receptive field: one random channel mix per stride phase at the image centre
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for a in range(sh):
        for b in range(sw):
            p, q = (h // 2) // sh * sh + a, (w // 2) // sw * sw + b
            if p >= h or q >= w:
                raise _Decline(f"input {h}x{w} too small to probe stride {sh}x{sw}")
            x = zero.copy()
            x[0, :, p, q] = rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)
            r = np.abs(run(x) - y0)
            if not np.all(np.isfinite(r)):
                raise _Decline("non-finite response to an impulse")
            if n > 1 and r[1:].max() > 0:
                raise _Decline("the region mixes batch items")
            hit = r[0].max(axis=0) > 1e-6 * max(r.max(), 1e-30)
            ii, jj = np.nonzero(hit)
            if ii.size == 0:
                continue
            if ii.min() == 0 or ii.max() == ho - 1 or jj.min() == 0 or jj.max() == wo - 1:
                raise _Decline(
                    f"receptive field reaches the border of the {ho}x{wo} output "
                    "(unbounded, or the image is too small to extract it)"
                )
            rows += [p - sh * ii.min(), p - sh * ii.max()]
            cols += [q - sw * jj.min(), q - sw * jj.max()]
    if not rows:
        raise _Decline("output does not depend on the input")
    kh, pt, pb = _geometry(min(rows), max(rows), h, ho, sh)
    kw, pl, pr = _geometry(min(cols), max(cols), w, wo, sw)

    weight = np.zeros((o, c, kh, kw), np.float64)
    for a in range(sh):
        ps = _axis_positions(h, ho, sh, min(rows), max(rows), a)
        for b in range(sw):
            qs = _axis_positions(w, wo, sw, min(cols), max(cols), b)
            slots = [(i, p, q) for i in range(n) for p in ps for q in qs]
            if not slots:
                raise _Decline(f"input {h}x{w} too small to probe a {kh}x{kw} kernel")
            for start in range(0, c, len(slots)):
                chans = range(start, min(c, start + len(slots)))
                x = zero.copy()
                for ch, (i, p, q) in zip(chans, slots, strict=False):
                    x[i, ch, p, q] = 1.0
                r = run(x) - y0
                for ch, (i, p, q) in zip(chans, slots, strict=False):
                    ii = range(-((max(rows) - p) // sh), (p - min(rows)) // sh + 1)
                    jj = range(-((max(cols) - q) // sw), (q - min(cols)) // sw + 1)
                    for oi in ii:
                        for oj in jj:
                            weight[:, ch, p - sh * oi + pt, q - sw * oj + pl] = r[i, :, oi, oj]

    # bias at an interior output pixel (its window touches no padding), else the centre
    ic = next((i for i in range(ho) if sh * i - pt >= 0 and sh * i - pt + kh <= h), ho // 2)
    jc = next((j for j in range(wo) if sw * j - pl >= 0 and sw * j - pl + kw <= w), wo // 2)
    bias = y0[0, :, ic, jc]
    group = _group_count(weight)
    og, cg = o // group, c // group
    grouped = np.stack([weight[k, (k // og) * cg : (k // og + 1) * cg] for k in range(o)])
    return _ConvSpec(
        grouped.astype(np.float32), bias.astype(np.float32), [pt, pl, pb, pr], [sh, sw], group
    )


def _macs(spec: _ConvSpec, region: _Region) -> tuple[int, int]:
    """Multiply-accumulates of the extracted conv and of the region's convs (per image; 0 for
    the region when an output shape is unknown, which skips the comparison)."""

    def macs(out: ir.Value, weight_shape: Sequence[int]) -> int | None:
        dims = list(out.shape) if out.shape is not None else None
        if not dims or not all(isinstance(d, int) for d in dims[1:]):
            return None
        return math.prod(dims[1:]) * math.prod(weight_shape[1:])

    total = 0
    for node in region.nodes:
        if node.op_type == "Conv":
            m = macs(node.outputs[0], const(node.inputs[1]).shape)
            if m is None:
                return 0, 0
            total += m
    return macs(region.y, spec.weight.shape) or 0, total


def _group_count(weight: np.ndarray) -> int:
    """Largest g such that the kernel is block-diagonal in g (output, input) channel groups."""
    o, c = weight.shape[:2]
    energy = np.abs(weight).max(axis=(2, 3))
    tol = 1e-7 * max(energy.max(), 1e-30)
    g0 = math.gcd(o, c)
    for g in sorted((d for d in range(2, g0 + 1) if g0 % d == 0), reverse=True):
        mask = np.kron(np.eye(g, dtype=bool), np.ones((o // g, c // g), dtype=bool))
        if np.all(energy[~mask] <= tol):
            return g
    return 1


def _conv_model(spec: _ConvSpec, x_shape: Sequence[int], opsets: dict[str, int]) -> onnx.ModelProto:
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Conv", ["x", "W", "B"], ["y"], **spec.attributes)],
        "extracted",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x_shape))],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [
            onnx.numpy_helper.from_array(spec.weight, "W"),
            onnx.numpy_helper.from_array(spec.bias, "B"),
        ],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = 9
    return model


def _verify(
    run: Callable, spec: _ConvSpec, x_shape: Sequence[int], sub: onnx.ModelProto, seed: int
) -> tuple[float, float]:
    """Max abs error of the conv vs the region over seeded random inputs, and the output scale."""
    from edgec.verify import ort_session

    opsets = {d.domain: d.version for d in sub.opset_import if d.domain == ""}
    sess = ort_session(_conv_model(spec, x_shape, opsets))
    rng = np.random.default_rng(seed + 1)
    err = scale = 0.0
    for offset in (0.0, 1.0):
        x = (rng.standard_normal(x_shape) + offset).astype(np.float32)
        want = run(x).astype(np.float64)
        got = sess.run(None, {"x": x})[0].astype(np.float64)
        if got.shape != want.shape:
            raise _Decline(
                f"extracted conv gives shape {list(got.shape)}, region {list(want.shape)}"
            )
        err = max(err, float(np.abs(got - want).max()))
        scale = max(scale, float(np.abs(want).max()))
    return err, scale


# -- rewrite ----------------------------------------------------------------------------------
def _replace(graph: ir.Graph, region: _Region, spec: _ConvSpec) -> None:
    base = (region.y.name or "extracted").replace("/", "_").strip("_")
    taken = set(graph.initializers)
    inits = []
    for suffix, arr in (("W", spec.weight), ("B", spec.bias)):
        name, k = f"{base}_extracted_{suffix}", 0
        while name in taken:
            k += 1
            name = f"{base}_extracted_{suffix}_{k}"
        value = ir.Value(
            name=name,
            shape=ir.Shape(arr.shape),
            type=ir.TensorType(ir.DataType.FLOAT),
            const_value=ir.tensor(arr, name=name),
        )
        graph.register_initializer(value)
        inits.append(value)
    conv = ir.node("Conv", [region.x, *inits], spec.attributes, name=f"{base}_extracted_conv")
    ir.convenience.replace_nodes_and_values(
        graph, region.y.producer(), region.nodes, [conv], [region.y], [conv.outputs[0]]
    )
