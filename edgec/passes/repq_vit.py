"""repq_vit_scales: RepQ-ViT scale re-parameterization of post-LayerNorm activations (exact).

RepQ-ViT (Li et al., ICCV 2023; docs rewrites.md 2.7) quantizes a LayerNorm output per channel
for calibration, then moves the per-channel part into the weights so that inference needs only a
per-tensor (layer-wise) quantizer. Given per-channel asymmetric quantizer parameters (scale
``d_c``, zero point ``z_c``, so ``min_c = -z_c d_c``) of a LayerNorm output:

    d~ = mean d_c,  z~ = mean z_c,  min~ = -z~ d~,  r = d / d~,  b = min / r - min~
    LayerNorm:           gamma' = gamma / r,   beta' = beta / r - b     (LN'(x) = LN(x)/r - b)
    each consuming Linear y = x W + bias (W[in, out]):
                         W' = diag(r) W,        bias' = bias + (r b) W

The function is unchanged (exact in real arithmetic); afterwards every channel's quantization
grid (min_c, d_c) maps onto the common grid (min~, d~). The per-tensor parameters (d~, z~) of each
rewritten LayerNorm output are left in ``layerwise_params`` (keyed by the LN output name, which
the rewrite keeps) for the quantizer; z~ is the unrounded mean as in the official code.

Consumers: every use of the LN output must be a Linear - ``MatMul(x, W const [C, out])`` with an
optional ``Add(bias const)``, or ``Gemm(x, B const, C const?)`` (transA=0, any transB/alpha/beta)
- possibly behind Reshapes that keep the last (channel) axis; anything else (a residual Add, a
Gather, Transpose, Slice, a graph output) declines the LayerNorm with the reason, as do
``axis != -1``, non-constant gamma/beta and used Mean/InvStdDev outputs. Only constants are
created (fresh initializers: the exporter shares LN weights between layers) and, for a MatMul
without bias, one bias Add.

Not in the default pipeline: the int8 pipeline runs it with calibrated ``channel_params``
(``{LN output name: (d_c, z_c)}``, typically from the activation quantizer of the Linear that reads
the LN output, calibrated on real data). Without ``channel_params`` the pass derives them itself
from per-channel min/max measured in onnxruntime on ``calibration_inputs`` (or, failing those, on
seeded N(0, 1) inputs - fine for tests, meaningless for accuracy) with asymmetric ``n_bits``
quantizers: ``lo = min(min, 0)``, ``hi = max(max, 0)``, ``d = (hi - lo) / (2^n - 1)``,
``z = round(-lo / d)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from edgec.passes._ir import const, remove_unused, to_ir, to_proto
from edgec.passes.base import PassResult

ChannelParams = Mapping[str, tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class _Linear:
    node: ir.Node  # MatMul or Gemm
    weight: np.ndarray  # effective W[in, out] (float64; Gemm: alpha and transB applied)
    bias_add: ir.Node | None = None  # MatMul: the Add(bias const) that follows, if any
    bias_index: int = 1  # which input of bias_add is the constant


@dataclasses.dataclass
class _Plan:
    ln: ir.Node
    gamma: np.ndarray
    beta: np.ndarray
    linears: list[_Linear]

    @property
    def out(self) -> ir.Value:
        return self.ln.outputs[0]


class _Decline(Exception):
    pass


class RepQViTScales:
    name = "repq_vit_scales"
    summary = "RepQ-ViT: post-LayerNorm per-channel quantizer scales into LN affine and Linears"

    def __init__(
        self,
        channel_params: ChannelParams | None = None,
        *,
        calibration_inputs: Sequence[Mapping[str, np.ndarray]] | None = None,
        n_bits: int = 8,
        seed: int = 0,
        random_batches: int = 2,
    ) -> None:
        self.channel_params = channel_params
        self.calibration_inputs = calibration_inputs
        self.n_bits, self.seed, self.random_batches = n_bits, seed, random_batches
        # Set by each call: {LN output name: (d~, z~)} of every rewritten LayerNorm, and the
        # per-channel (d_c, z_c) that were used for it.
        self.layerwise_params: dict[str, tuple[float, float]] = {}
        self.channel_params_used: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        self.layerwise_params, self.channel_params_used = {}, {}
        ir_model = to_ir(model)
        graph = ir_model.graph
        plans, declined = [], []
        for node in graph:
            if node.op_type == "LayerNormalization" and node.domain == "":
                try:
                    plans.append(_plan(node))
                except _Decline as e:
                    declined.append(f"{self.name}: {_label(node)}: {e}")
        stats = {"layernorms_reparameterized": 0, "linears_updated": 0, "bias_adds_created": 0}
        params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.channel_params is not None:
            known = {n.outputs[0].name for n in graph if n.op_type == "LayerNormalization"}
            declined += [
                f"{self.name}: channel params for {k!r}, which is no LayerNormalization output"
                for k in self.channel_params
                if k not in known
            ]
            plans = [p for p in plans if p.out.name in self.channel_params]
            params = dict(self.channel_params)
        elif plans:
            try:
                params = self._calibrate(model, [p.out.name for p in plans])
            except Exception as e:  # noqa: BLE001 - no inputs to make, onnxruntime failure
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                declined += [
                    f"{self.name}: {_label(p.ln)}: cannot calibrate: {reason}" for p in plans
                ]
                plans = []
        for plan in plans:
            try:
                d, z = _check_params(params[plan.out.name], plan.gamma.shape[0])
            except _Decline as e:
                declined.append(f"{self.name}: {_label(plan.ln)}: {e}")
                continue
            stats["bias_adds_created"] += _apply(graph, plan, d, z)
            stats["layernorms_reparameterized"] += 1
            stats["linears_updated"] += len(plan.linears)
            self.layerwise_params[plan.out.name] = (float(d.mean()), float(z.mean()))
            self.channel_params_used[plan.out.name] = (d, z)
        if not stats["layernorms_reparameterized"]:
            return PassResult(model, stats, declined)
        remove_unused(ir_model)
        return PassResult(to_proto(ir_model), stats, declined)

    def _calibrate(
        self, model: onnx.ModelProto, names: Sequence[str]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-channel asymmetric quantizer (d_c, z_c) of each named value, from its min/max
        over all axes but the last, measured in onnxruntime."""
        from edgec.frontend import signature
        from edgec.verify import ort_session, random_inputs

        probe = onnx.ModelProto.FromString(model.SerializeToString())
        present = {o.name for o in probe.graph.output}
        probe.graph.output.extend(
            onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
            for n in names
            if n not in present
        )
        sess = ort_session(probe)
        batches = self.calibration_inputs
        if batches is None:
            specs = signature(model)[0]
            batches = [random_inputs(specs, self.seed + k) for k in range(self.random_batches)]
        lo = {n: np.inf for n in names}
        hi = {n: -np.inf for n in names}
        for feeds in batches:
            for n, arr in zip(names, sess.run(list(names), dict(feeds)), strict=True):
                flat = arr.reshape(-1, arr.shape[-1]).astype(np.float64)
                lo[n], hi[n] = np.minimum(lo[n], flat.min(0)), np.maximum(hi[n], flat.max(0))
        levels = 2**self.n_bits - 1
        params = {}
        for n in names:
            low, high = np.minimum(lo[n], 0.0), np.maximum(hi[n], 0.0)
            d = np.maximum((high - low) / levels, 1e-8)
            params[n] = (d, np.clip(np.round(-low / d), 0, levels))
        return params


def _label(node: ir.Node) -> str:
    return f"LayerNormalization {node.name or node.outputs[0].name!r}"


def _check_params(p: tuple[np.ndarray, np.ndarray], channels: int) -> tuple[np.ndarray, ...]:
    d, z = (np.asarray(a, np.float64).reshape(-1) for a in p)
    if d.shape != (channels,) or z.shape != (channels,):
        raise _Decline(f"channel params have shapes {d.shape}, {z.shape}, expected ({channels},)")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(z)) and np.all(d > 0)):
        raise _Decline("channel scales must be finite and positive")
    return d, z


def _plan(ln: ir.Node) -> _Plan:
    axis = ln.attributes.get("axis")
    axis = -1 if axis is None else axis.as_int()
    x = ln.inputs[0]
    rank = len(x.shape) if x.shape is not None else None
    if axis != -1 and (rank is None or axis != rank - 1):
        raise _Decline(f"axis {axis} is not the last axis")
    if any(o.uses() or o.is_graph_output() for o in ln.outputs[1:]):
        raise _Decline("its Mean/InvStdDev outputs are used")
    gamma = const(ln.inputs[1])
    beta_in = ln.inputs[2] if len(ln.inputs) > 2 else None
    beta = None if beta_in is None else const(beta_in)
    if gamma is None or (beta_in is not None and beta is None):
        raise _Decline("gamma/beta are not constant")
    if gamma.ndim != 1:
        raise _Decline(f"gamma has shape {list(gamma.shape)}, expected [C]")
    beta = np.zeros_like(gamma) if beta is None else np.broadcast_to(beta, gamma.shape)
    channels = gamma.shape[0]
    linears: list[_Linear] = []
    _collect(ln.outputs[0], channels, linears)
    return _Plan(ln, gamma.astype(np.float64), beta.astype(np.float64), linears)


def _collect(value: ir.Value, channels: int, linears: list[_Linear]) -> None:
    """Append the Linears reading ``value`` (through channel-preserving Reshapes); decline when
    any use is something else."""
    if value.is_graph_output():
        raise _Decline(f"{value.name!r} is a graph output")
    if not value.uses():
        raise _Decline(f"{value.name!r} has no consumer")
    for use in value.uses():
        node, op = use.node, use.node.op_type
        if node.domain != "" or use.idx != 0:
            raise _Decline(f"consumer {op} {node.name!r} is not a Linear")
        if op == "Reshape":
            shape = const(node.inputs[1])
            if shape is None or shape.size == 0 or int(shape[-1]) != channels:
                raise _Decline(f"Reshape {node.name!r} does not keep the channel axis")
            _collect(node.outputs[0], channels, linears)
        elif op == "MatMul":
            linears.append(_matmul(node, channels))
        elif op == "Gemm":
            linears.append(_gemm(node, channels))
        else:
            raise _Decline(f"consumer {op} {node.name!r} is not a Linear")


def _matmul(node: ir.Node, channels: int) -> _Linear:
    w = const(node.inputs[1])
    if w is None or w.ndim != 2 or w.shape[0] != channels:
        raise _Decline(f"MatMul {node.name!r} has no constant [C, out] weight")
    linear = _Linear(node, w.astype(np.float64))
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) == 1 and not out.is_graph_output() and uses[0].node.op_type == "Add":
        add = uses[0].node
        other = 1 - uses[0].idx
        bias = const(add.inputs[other])
        # a per-output-feature (or scalar) bias; adding (r b) W keeps the Add's output shape
        if bias is not None and (bias.size == 1 or bias.shape[-1:] == (w.shape[1],)):
            linear.bias_add, linear.bias_index = add, other
    return linear


def _gemm(node: ir.Node, channels: int) -> _Linear:
    def attr(name: str, default):
        a = node.attributes.get(name)
        return default if a is None else a.value

    b = const(node.inputs[1])
    c_in = node.inputs[2] if len(node.inputs) > 2 else None
    if attr("transA", 0) != 0:
        raise _Decline(f"Gemm {node.name!r} has transA=1")
    if b is None or (c_in is not None and const(c_in) is None):
        raise _Decline(f"Gemm {node.name!r} has non-constant weight or bias")
    w = (b.T if attr("transB", 0) else b).astype(np.float64) * attr("alpha", 1.0)
    if w.shape[0] != channels:
        raise _Decline(f"Gemm {node.name!r} weight does not read the LN channels")
    return _Linear(node, w)


def _new_const(graph: ir.Graph, base: str, arr: np.ndarray) -> ir.Value:
    name, k = base, 0
    while name in graph.initializers:
        k += 1
        name = f"{base}_{k}"
    value = ir.Value(
        name=name,
        shape=ir.Shape(arr.shape),
        type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
        const_value=ir.tensor(arr, name=name),
    )
    graph.register_initializer(value)
    return value


def _apply(graph: ir.Graph, plan: _Plan, d: np.ndarray, z: np.ndarray) -> int:
    """Rewrite one LayerNorm and its Linears; returns the number of bias Adds created."""
    d_t, z_t = d.mean(), z.mean()
    r = d / d_t
    b = (-z * d) / r - (-z_t * d_t)
    ln, base = plan.ln, (plan.out.name or "ln").replace("/", "_").strip("_")
    dtype = const(ln.inputs[1]).dtype
    ln.replace_input_with(
        1, _new_const(graph, f"{base}_repq_gamma", (plan.gamma / r).astype(dtype))
    )
    beta = _new_const(graph, f"{base}_repq_beta", (plan.beta / r - b).astype(dtype))
    if len(ln.inputs) < 3:
        ln.resize_inputs(3)
    ln.replace_input_with(2, beta)
    created = 0
    for k, lin in enumerate(plan.linears):
        node, tag = lin.node, f"{base}_repq_linear{k}"
        delta = (r * b) @ lin.weight  # added to the bias, [out]
        w_old = const(node.inputs[1])
        if node.op_type == "Gemm":
            trans_b = node.attributes.get("transB")
            scale = r[None, :] if trans_b is not None and trans_b.as_int() else r[:, None]
            node.replace_input_with(
                1, _new_const(graph, f"{tag}_W", (w_old * scale).astype(w_old.dtype))
            )
            beta_attr = node.attributes.get("beta")
            gemm_beta = 1.0 if beta_attr is None else beta_attr.as_float()
            c_in = node.inputs[2] if len(node.inputs) > 2 else None
            c_old = None if c_in is None else const(c_in)
            if c_old is None or gemm_beta == 0.0:  # no C (or C ignored): new C with beta 1
                if gemm_beta != 1.0:
                    node.attributes["beta"] = ir.Attr("beta", ir.AttributeType.FLOAT, 1.0)
                c_new = delta.astype(w_old.dtype)
                node.resize_inputs(3)
            else:
                c_new = (c_old + delta / gemm_beta).astype(c_old.dtype)
            node.replace_input_with(2, _new_const(graph, f"{tag}_C", c_new))
            continue
        node.replace_input_with(
            1, _new_const(graph, f"{tag}_W", (w_old * r[:, None]).astype(w_old.dtype))
        )
        if lin.bias_add is not None:
            old = const(lin.bias_add.inputs[lin.bias_index])
            new = (old.astype(np.float64) + delta).astype(old.dtype)
            lin.bias_add.replace_input_with(lin.bias_index, _new_const(graph, f"{tag}_bias", new))
            continue
        out = node.outputs[0]
        uses = list(out.uses())
        bias = _new_const(graph, f"{tag}_bias", delta.astype(w_old.dtype))
        add = ir.node("Add", [out, bias], name=f"{tag}_bias_add")
        graph.insert_after(node, add)
        for use in uses:
            use.node.replace_input_with(use.idx, add.outputs[0])
        if out.is_graph_output():
            i = list(graph.outputs).index(out)
            name = out.name
            out.name = f"{name}_no_bias"
            add.outputs[0].name = name
            graph.outputs[i] = add.outputs[0]
        created += 1
    return created
