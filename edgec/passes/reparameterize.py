"""reparameterize: merge parallel conv branches summed by an Add tree into one Conv.

Structural re-parameterization (RepVGG, ACNet, MobileOne, UniRepLKNet dilated blocks, plain
residuals). Each maximal Add tree (nested Adds whose intermediate sums have no other consumer,
any nesting and operand order) is flattened into its leaves; each leaf is walked back through
per-channel affine ops to a *branch* ``y = a * f(x) + c`` per output channel, where ``f`` is a
``Conv`` with constant weights or the identity, and ``a, c`` come from the ops in between:
BatchNormalization (inference: ``a = gamma / sqrt(var + eps)``, ``c = beta - mean * a``) and
Mul / Add / Sub / Div by a per-channel constant. Leaves that are per-channel constants are bias
terms. Branches reading the same tensor ``x`` are merged into one Conv around the *main*
branch, the conv with the largest (dilation-expanded) kernel:

* affine fold: ``W' = a * W``, ``B' = a * B + c``;
* dilation: a kernel ``k`` with dilation ``r`` is the dense kernel of size ``r(k-1)+1`` with
  ``W_dense[..., r*i, r*j] = W[..., i, j]``;
* embedding: a (dense) kernel ``kh x kw`` with pads ``(pt, pl, pb, pr)`` equals the main kernel
  ``KH x KW`` with pads ``(PT, PL, PB, PR)`` when placed at offset ``(PT-pt, PL-pl)`` inside
  zeros, iff ``0 <= PT-pt <= KH-kh``, ``0 <= PL-pl <= KW-kw``, ``PB-pb = KH-kh-(PT-pt)`` and
  ``PR-pr = KW-kw-(PL-pl)``;
* identity (``x`` itself or ``BN(x)``): the 1x1 kernel with pads 0 and, for ``g`` groups over
  ``C`` channels, ``W_id[o, o mod (C/g)] = 1``, embedded by the same rule;
* merge: ``W = sum W_i``, ``B = sum B_i + sum constant leaves``, all in float64, cast once to the
  main weight's dtype. A dilated main branch keeps its dilation when every other branch lies on
  its lattice; the merged kernel is then subsampled back.

Preconditions (otherwise the branch is left alone and the reason reported in ``declined``): all
merged branches read the same ``x``; constant, unshared conv weights; the values between ``x``
and the Add tree have no other consumer; same stride, group and channel counts as the main
branch; padding that embeds; an identity branch needs stride 1 and ``C_in == C_out``. Branches
that fail (or non-linear leaves) stay as operands of a smaller Add (partial merge). The pass
iterates to a fixpoint, so e.g. a train-form RepVGG or MobileOne block becomes Conv + Relu.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_ir as ir

from edgec.passes._ir import MAX_ROUNDS, bn_affine, const, remove_unused, to_ir, to_proto
from edgec.passes.base import PassResult

RULES = ("merged_convs", "conv_branches", "identity_branches", "folded_affines", "constant_leaves")


@dataclasses.dataclass
class ConvSpec:
    node: ir.Node
    weight: np.ndarray  # float64 [O, I/g, kh, kw]
    bias: np.ndarray  # float64 [O]
    dtype: np.dtype  # of the weight, for the merged conv
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilations: tuple[int, int]
    group: int

    @property
    def extent(self) -> tuple[int, int]:
        """Kernel size once the dilation is expanded into a dense kernel."""
        (kh, kw), (rh, rw) = self.weight.shape[2:], self.dilations
        return rh * (kh - 1) + 1, rw * (kw - 1) + 1

    def dense(self) -> np.ndarray:
        rh, rw = self.dilations
        out = np.zeros(self.weight.shape[:2] + self.extent)
        out[:, :, ::rh, ::rw] = self.weight
        return out


@dataclasses.dataclass
class Branch:
    """One Add-tree operand as ``scale * f(x) + shift`` per channel; f is ``conv`` or identity."""

    leaf: ir.Value
    x: ir.Value
    conv: ConvSpec | None
    scale: np.ndarray  # float64, length 1 or C
    shift: np.ndarray
    nodes: list[ir.Node]  # leaf back to (and including) the conv: removed when merged
    note: str | None = None  # why the walk stopped at a Conv instead of passing it
    blocked: ir.Value | None = None  # the input of that Conv

    @property
    def linear(self) -> bool:
        """A conv or affine branch (as opposed to an opaque operand)."""
        return self.conv is not None or bool(self.nodes)

    def label(self) -> str:
        if self.conv is not None:
            return f"Conv {_label(self.conv.node)}"
        return f"identity branch on {self.x.name!r}"


@dataclasses.dataclass
class Merge:
    """A group of branches on one input, to be replaced by one Conv."""

    main: Branch
    members: list[Branch]
    consts: list[ir.Value]  # constant leaves absorbed into the bias


class Reparameterize:
    name = "reparameterize"
    summary = "merge parallel Conv / BN / identity branches summed by Adds into one Conv"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        ir_model = to_ir(_with_shapes(model))
        graph = ir_model.graph
        names = _Names(graph)
        stats: Counter[str] = Counter()
        declined: list[str] = []
        for _ in range(MAX_ROUNDS):
            declined, round_stats = [], Counter()
            for root in [n for n in graph if _is_root(n)]:
                if root.graph is graph:  # not removed by an earlier merge of this round
                    round_stats += _process(graph, root, names, declined)
            stats += round_stats
            if not round_stats:
                break
        result = {rule: stats[rule] for rule in RULES}
        if not stats:
            return PassResult(model, result, sorted(set(declined)))
        remove_unused(ir_model)
        return PassResult(to_proto(ir_model), result, sorted(set(declined)))


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes are needed to check broadcasting: infer them if the model lacks some."""
    known = {v.name for v in (*model.graph.value_info, *model.graph.output)}
    if all(out in known for node in model.graph.node for out in node.output):
        return model
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # e.g. a model over 2 GB: go on with the shapes it has
        return model


# ---------------------------------------------------------------------------------------------
# Add trees and branches


def _label(node: ir.Node) -> str:
    return repr(node.name or node.outputs[0].name)


def _exclusive(value: ir.Value) -> bool:
    """Consumed by exactly one node input and not a graph output: safe to remove with it."""
    return len(value.uses()) == 1 and not value.is_graph_output()


def _is_add(node: ir.Node | None) -> bool:
    return (
        node is not None
        and node.op_type == "Add"
        and node.domain == ""
        and len(node.inputs) == 2
        and all(v is not None for v in node.inputs)
    )


def _absorbed(value: ir.Value) -> bool:
    """An inner sum that belongs to its consumer's Add tree."""
    return _is_add(value.producer()) and _exclusive(value) and _is_add(value.uses()[0].node)


def _is_root(node: ir.Node) -> bool:
    return _is_add(node) and not _absorbed(node.outputs[0])


def _flatten(root: ir.Node) -> tuple[list[ir.Value], list[ir.Node]]:
    """Leaves (left to right) and inner Add nodes of the Add tree rooted at ``root``."""
    leaves: list[ir.Value] = []
    inner: list[ir.Node] = []
    stack = list(reversed(root.inputs))
    while stack:
        value = stack.pop()
        if _absorbed(value):
            inner.append(value.producer())
            stack += reversed(value.producer().inputs)
        else:
            leaves.append(value)
    return leaves, inner


def _per_channel(arr: np.ndarray, rank: int) -> np.ndarray | None:
    """``arr`` as a per-channel vector (length 1 or C) when it broadcasts only along axis 1."""
    if arr.dtype.kind != "f" or arr.ndim > rank or rank < 2:
        return None
    shape = (1,) * (rank - arr.ndim) + arr.shape
    if any(d != 1 for axis, d in enumerate(shape) if axis != 1):
        return None
    return arr.astype(np.float64).reshape(-1)


def _affine_step(node: ir.Node) -> tuple[ir.Value, np.ndarray, np.ndarray] | None:
    """``node`` as ``out = a * data + c`` per channel: (data, a, c), or None."""
    if node.op_type == "BatchNormalization":
        affine = bn_affine(node)
        return None if affine is None else (node.inputs[0], *affine)
    if node.domain != "" or node.op_type not in ("Mul", "Add", "Sub", "Div"):
        return None
    out = node.outputs[0]
    if len(node.inputs) != 2 or out.shape is None:
        return None
    for k_index in (1, 0):
        data, k = node.inputs[1 - k_index], const(node.inputs[k_index])
        if k is None or data is None or const(data) is not None or data.shape != out.shape:
            continue
        vec = _per_channel(k, len(out.shape))
        if vec is None:
            continue
        one, zero = np.ones(1), np.zeros(1)
        if node.op_type == "Mul":
            return data, vec, zero
        if node.op_type == "Add":
            return data, one, vec
        if node.op_type == "Sub":
            return (data, one, -vec) if k_index == 1 else (data, -one, vec)
        if k_index == 1 and np.all(vec != 0):  # Div(data, k)
            return data, 1.0 / vec, zero
    return None


def _ints(node: ir.Node, name: str, default: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in node.attributes.get_ints(name, tuple(default)))


def _conv_spec(node: ir.Node) -> ConvSpec | str:
    """The constant-weight 2-D Conv ``node``, or the reason it cannot be merged."""
    if node.domain != "" or len(node.inputs) < 2 or node.inputs[0] is None:
        return "not a standard Conv"
    w = const(node.inputs[1])
    if w is None:
        return "weight is not a constant"
    if w.ndim != 4 or w.dtype.kind != "f":
        return "only 2-D float convolutions are merged"
    b_value = node.inputs[2] if len(node.inputs) > 2 else None
    b = np.zeros(w.shape[0]) if b_value is None else const(b_value)
    if b is None:
        return "bias is not a constant"
    if any(v is not None and len(v.uses()) > 1 for v in (node.inputs[1], b_value)):
        return "weight or bias shared with another node"
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return f"auto_pad={auto_pad} is not supported"
    return ConvSpec(
        node=node,
        weight=w.astype(np.float64),
        bias=np.asarray(b, np.float64).reshape(-1),
        dtype=w.dtype,
        strides=_ints(node, "strides", (1, 1)),
        pads=_ints(node, "pads", (0,) * 4),
        dilations=_ints(node, "dilations", (1, 1)),
        group=node.attributes.get_int("group", 1),
    )


def _walk(leaf: ir.Value) -> Branch:
    """Follow ``leaf`` back through exclusive affine ops to a Conv or to the branch input."""
    value, nodes, note, blocked = leaf, [], None, None
    scale, shift = np.ones(1), np.zeros(1)
    while (node := value.producer()) is not None:
        if not _exclusive(value):
            if node.op_type == "Conv":
                note = f"output of Conv {_label(node)} has other consumers"
                blocked = node.inputs[0]
            break
        if node.op_type == "Conv":
            spec = _conv_spec(node)
            if isinstance(spec, str):
                note, blocked = f"Conv {_label(node)}: {spec}", node.inputs[0]
                break
            return Branch(leaf, node.inputs[0], spec, scale, shift, [*nodes, node])
        step = _affine_step(node)
        if step is None:
            break
        value, a, c = step
        scale, shift = scale * a, scale * c + shift  # (current) after (a * . + c)
        nodes.append(node)
    return Branch(leaf, value, None, scale, shift, nodes, note, blocked)


# ---------------------------------------------------------------------------------------------
# Merging


def _embed_offset(
    kernel: tuple[int, int], pads: tuple[int, ...], main: ConvSpec
) -> tuple[int, int] | None:
    """Where a kernel with ``pads`` sits inside the main dense kernel (rewrites.md 2.0)."""
    (kh, kw), (big_h, big_w) = kernel, main.extent
    top, left, bottom, right = main.pads
    dy, dx = top - pads[0], left - pads[1]
    fits = 0 <= dy <= big_h - kh and 0 <= dx <= big_w - kw
    if not fits or bottom - pads[2] != big_h - kh - dy or right - pads[3] != big_w - kw - dx:
        return None
    return dy, dx


def _on_lattice(offset: tuple[int, int], kernel: tuple[int, int], dil: tuple[int, int],
                main: ConvSpec) -> bool:  # fmt: skip
    """Every tap of the embedded kernel falls on the main branch's dilation lattice."""
    return all(
        off % r == 0 and (k == 1 or d % r == 0)
        for off, k, d, r in zip(offset, kernel, dil, main.dilations, strict=True)
    )


def _geometry(br: Branch) -> tuple[tuple[int, int], tuple[int, ...], tuple[int, int]]:
    """(undilated kernel, pads, dilations) of a branch; the identity is a 1x1 kernel, pads 0."""
    if br.conv is None:
        return (1, 1), (0, 0, 0, 0), (1, 1)
    return br.conv.weight.shape[2:], br.conv.pads, br.conv.dilations


def _refusal(br: Branch, main: ConvSpec) -> str | None:
    """Why ``br`` cannot be merged into the conv ``main``; None if it can."""
    out_ch = main.weight.shape[0]
    if len(br.scale) not in (1, out_ch) or len(br.shift) not in (1, out_ch):
        return f"per-channel affine of length {len(br.scale)} on {out_ch} channels"
    spec = br.conv
    if spec is not None:
        if spec.strides != main.strides:
            return f"stride {list(spec.strides)} differs from main branch {list(main.strides)}"
        if spec.group != main.group:
            return f"group {spec.group} differs from main branch group {main.group}"
        if spec.weight.shape[:2] != main.weight.shape[:2]:
            return f"weight {list(spec.weight.shape)} vs main {list(main.weight.shape)}"
    else:
        if main.strides != (1, 1):
            return f"identity needs stride 1, main branch has stride {list(main.strides)}"
        shape = br.x.shape
        c_in = shape[1] if shape is not None and len(shape) == 4 else None
        if c_in != out_ch:
            return f"identity needs C_in == C_out, got {c_in} -> {out_ch}"
    kernel, pads, dil = _geometry(br)
    dense = spec.extent if spec is not None else kernel
    offset = _embed_offset(dense, pads, main)
    if offset is None:
        return (f"kernel {dense[0]}x{dense[1]} pads {list(pads)} cannot be embedded in main "
                f"{main.extent[0]}x{main.extent[1]} pads {list(main.pads)}")  # fmt: skip
    if main.dilations != (1, 1) and not _on_lattice(offset, kernel, dil, main):
        return f"dilation {list(dil)} does not fit main branch dilation {list(main.dilations)}"
    return None


def _main_branch(convs: list[Branch]) -> Branch:
    """The conv with the largest dense kernel; an undilated one wins a tie."""
    return max(
        convs,
        key=lambda b: (b.conv.extent[0] * b.conv.extent[1], b.conv.dilations == (1, 1)),
    )


def _split_leaves(leaves: list[ir.Value]) -> tuple[list[Branch], list[ir.Value]]:
    """Branches, and per-channel constant leaves (bias terms)."""
    branches, consts = [], []
    for leaf in leaves:
        value = const(leaf)
        if value is not None and _per_channel(value, 4) is not None:
            consts.append(leaf)
        else:
            branches.append(_walk(leaf))
    return branches, consts


def _group_merge(
    group: list[Branch], consts: list[ir.Value], label: str, declined: list[str]
) -> Merge | None:
    """Merge of the branches on one input around its main conv (None if nothing to merge)."""
    convs = [b for b in group if b.conv is not None]
    if not convs:
        return None
    main = _main_branch(convs)
    members = [main]
    for br in group:
        reason = None if br is main else _refusal(br, main.conv)
        if reason is not None:
            declined.append(f"{label}: {br.label()}: {reason}")
        elif br is not main:
            members.append(br)
    out_ch = main.conv.weight.shape[0]
    own = [c for c in consts if len(_per_channel(const(c), 4)) in (1, out_ch)]
    return Merge(main, members, own) if len(members) > 1 or own else None


def _plan(leaves: list[ir.Value], label: str) -> tuple[list[Merge], list[str]]:
    """Merges for the Add tree with ``leaves``, and the reasons branches were refused."""
    branches, consts = _split_leaves(leaves)
    groups: dict[ir.Value, list[Branch]] = {}
    for br in branches:
        groups.setdefault(br.x, []).append(br)
    merges: list[Merge] = []
    declined: list[str] = []
    for group in groups.values():
        merge = _group_merge(group, [] if merges else consts, label, declined)
        if merge is not None:
            merges.append(merge)
    # A Conv the walk could not pass matters only if it reads the input of another conv branch.
    conv_inputs = {b.x for b in branches if b.conv is not None}
    declined += [f"{label}: {b.note}" for b in branches if b.blocked in conv_inputs]
    merged = {id(b) for m in merges for b in m.members}
    linear_inputs = [x for x, group in groups.items() if any(b.linear for b in group)]
    unmerged = any(b.conv is not None and id(b) not in merged for b in branches)
    if len(linear_inputs) > 1 and unmerged:
        names = ", ".join(repr(x.name) for x in linear_inputs)
        declined.append(f"{label}: leaves on different inputs {names}")
    return merges, declined


def _merged_kernel(merge: Merge) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the embedded, affine-scaled branch kernels and biases (float64)."""
    main = merge.main.conv
    out_ch, in_per_group = main.weight.shape[:2]
    weight = np.zeros((out_ch, in_per_group, *main.extent))
    bias = np.zeros(out_ch)
    for br in merge.members:
        if br.conv is None:
            kernel = np.zeros((out_ch, in_per_group, 1, 1))
            kernel[np.arange(out_ch), np.arange(out_ch) % in_per_group] = 1.0
            own_bias, pads = np.zeros(out_ch), (0, 0, 0, 0)
        else:
            kernel, own_bias, pads = br.conv.dense(), br.conv.bias, br.conv.pads
        dy, dx = _embed_offset(kernel.shape[2:], pads, main)
        kh, kw = kernel.shape[2:]
        weight[:, :, dy : dy + kh, dx : dx + kw] += kernel * br.scale[:, None, None, None]
        bias += br.scale * own_bias + br.shift
    for c in merge.consts:
        bias += _per_channel(const(c), 4)
    rh, rw = main.dilations
    return weight[:, :, ::rh, ::rw], bias


# ---------------------------------------------------------------------------------------------
# Graph surgery


class _Names:
    """Fresh value / node names that do not clash with the graph's."""

    def __init__(self, graph: ir.Graph) -> None:
        self.used = {v.name for v in graph.inputs} | set(graph.initializers)
        for node in graph:
            self.used.add(node.name)
            self.used.update(v.name for v in node.outputs)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(value.const_value.dtype)
    graph.register_initializer(value)
    return value


def _conv_node(graph: ir.Graph, merge: Merge, names: _Names, base: str) -> ir.Node:
    main = merge.main.conv
    weight, bias = _merged_kernel(merge)
    w = _initializer(graph, names(f"{base}.weight"), weight.astype(main.dtype))
    b = _initializer(graph, names(f"{base}.bias"), bias.astype(main.dtype))
    attrs = [
        ir.AttrInt64s("dilations", main.dilations),
        ir.AttrInt64("group", main.group),
        ir.AttrInt64s("kernel_shape", weight.shape[2:]),
        ir.AttrInt64s("pads", main.pads),
        ir.AttrInt64s("strides", main.strides),
    ]
    node = ir.Node("", "Conv", [merge.main.x, w, b], attrs, name=names(base))
    out, template = node.outputs[0], main.node.outputs[0]
    out.name, out.type, out.shape = names(f"{base}_output"), template.type, template.shape
    return node


def _broadcast_shape(values: list[ir.Value]) -> ir.Shape | None:
    shapes = [v.shape for v in values]
    if any(s is None or not s.is_static() for s in shapes):
        return None
    return ir.Shape(np.broadcast_shapes(*(tuple(s) for s in shapes)))


def _operands(leaves: list[ir.Value], merges: list[Merge], convs: list[ir.Node]) -> list:
    """Operands of the remaining sum, in leaf order; a merged conv enters where its main was."""
    merged = {id(m.main.leaf): c.outputs[0] for m, c in zip(merges, convs, strict=True)}
    absorbed = {id(v) for m in merges for v in (*(b.leaf for b in m.members), *m.consts)}
    return [merged.get(id(v), v) for v in leaves if id(v) in merged or id(v) not in absorbed]


def _sum(operands: list[ir.Value], names: _Names, base: str) -> tuple[list[ir.Node], ir.Value]:
    """A left-deep Add chain over ``operands``: its nodes and its result."""
    nodes, acc = [], operands[0]
    for i, value in enumerate(operands[1:], start=2):
        add = ir.Node("", "Add", [acc, value], name=names(f"{base}_add"))
        nodes.append(add)
        acc = add.outputs[0]
        acc.name, acc.type = names(f"{base}_sum"), value.type
        acc.shape = _broadcast_shape(operands[:i])
    return nodes, acc


def _process(graph: ir.Graph, root: ir.Node, names: _Names, declined: list[str]) -> Counter:
    """Merge what can be merged in the Add tree at ``root``; returns the counts."""
    leaves, inner = _flatten(root)
    merges, reasons = _plan(leaves, f"Add {_label(root)}")
    declined += reasons
    if not merges:
        return Counter()
    base = (root.name or root.outputs[0].name or "add") + "/reparam"
    convs = [_conv_node(graph, m, names, f"{base}_conv") for m in merges]
    adds, result = _sum(_operands(leaves, merges, convs), names, base)
    old = root.outputs[0]
    result.type, result.shape = old.type, old.shape
    graph.insert_before(root, [*convs, *adds])
    ir.convenience.replace_all_uses_with(old, result, replace_graph_outputs=True)
    members = [b for m in merges for b in m.members]
    graph.remove([root, *inner, *(n for b in members for n in b.nodes)], safe=True)
    names.used.discard(result.name)
    result.name = old.name  # keep the tree's output name (it may be a graph output)
    return Counter(
        merged_convs=len(merges),
        conv_branches=sum(b.conv is not None for b in members),
        identity_branches=sum(b.conv is None for b in members),
        folded_affines=sum(len(b.nodes) - (b.conv is not None) for b in members),
        constant_leaves=sum(len(m.consts) for m in merges),
    )
