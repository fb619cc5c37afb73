"""Data-free quantization (Nagel et al., ICCV 2019; docs rewrites.md section 5), ``--dfq``.

On the fp32 graph, before quantization (:func:`apply`), each step verified in onnxruntime:

1. ReLU6 -> ReLU between the layers of an equalizable pair (as in the paper: ``Clip(0, 6)`` is not
   positively homogeneous). Not exact: the change is measured on the probe samples and the step
   is reverted when the worst cosine falls below ``RELU6_MIN_COSINE``.
2. Cross-layer equalization of ``Conv -> [Relu] -> Conv`` pairs (group 1 or depthwise at either
   end), iterated over chains (pointwise -> depthwise -> pointwise) until the scales converge:
   ``s_i = sqrt(r1_i / r2_i)``, ``W1[i] /= s_i``, ``b1[i] /= s_i``, ``W2[:, i] *= s_i``.
   Exact in real arithmetic: reverted unless the outputs match within the passes' tolerance.
3. Bias absorption for ``Conv -> Relu -> Conv`` with an unpadded second conv:
   ``c = max(0, beta - 3 gamma)`` from BatchNorm statistics (data-free), or ``max(0, min)`` of
   the first conv's output on real calibration samples (then exact on them);
   ``b1 -= c``, ``b2 += sum_taps W2 c``. Kept when the outputs move by at most
   ``ABSORB_TOLERANCE`` (relative).

After quantization (:func:`bias_correction`), on the QDQ model: each quantized Conv/Gemm's bias
absorbs the expected error of its int8 weights, ``b -= (W_q - W) E[x]``, with ``E[x]`` per input
channel measured on real calibration samples, or, without data, analytic from BatchNorm
statistics: ``E[ReLU(z)] = gamma phi(beta/gamma) + beta Phi(beta/gamma)`` for
``z ~ N(beta, gamma^2)`` (ReLU6: doubly clipped). The int32 bias keeps its scale.

BatchNorm statistics (``beta``, ``gamma`` of each Conv's BN, :func:`bn_stats`) come from the
imported model before edgec's passes fold the BNs; they are keyed by Conv node name, which the
folds keep, and follow the rewrites (CLE divides them by ``s``, absorption shifts ``beta``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

Log = Callable[[str], None]
Stats = dict[str, tuple[np.ndarray, np.ndarray]]  # Conv node name -> (beta, gamma) of its output

CLE_MAX_ITERS = 32
CLE_CONVERGED = 1e-4  # max |log s| of an iteration
RELU6_MIN_COSINE = 0.999
RELU6_MAX_CLIPPED = 0.01
ABSORB_TOLERANCE = 1e-2
ABSORB_SIGMAS = 3.0


class _Graph:
    """Index of a ModelProto: producers, consumers, constants; edits weights in place."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def single_consumer(self, tensor: str) -> onnx.NodeProto | None:
        uses = self.consumers.get(tensor, [])
        return uses[0] if len(uses) == 1 and tensor not in self.outputs else None

    def private_weight(self, node: onnx.NodeProto, index: int) -> bool:
        name = node.input[index] if len(node.input) > index else ""
        return name in self.inits and len(self.consumers.get(name, [])) == 1

    def set(self, name: str, arr: np.ndarray) -> None:
        self.inits[name].CopyFrom(numpy_helper.from_array(arr, name))

    def add_init(self, base: str, arr: np.ndarray) -> str:
        name, k = base, 0
        while name in self.inits or name in self.producer:
            k += 1
            name = f"{base}_{k}"
        t = numpy_helper.from_array(arr, name)
        self.model.graph.initializer.append(t)
        self.inits[name] = self.model.graph.initializer[-1]
        return name


def _key(node: onnx.NodeProto) -> str:
    """A node's identity across rewrites: its name, else its first output."""
    return node.name or node.output[0]


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def bn_stats(model: onnx.ModelProto) -> Stats:
    """{Conv node name: (beta, |gamma|)} for each Conv whose only consumer is an inference-mode
    BatchNormalization with constant parameters: its normalized output is ~ N(beta, gamma^2)."""
    g = _Graph(model)
    stats: Stats = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        bn = g.single_consumer(node.output[0])
        if bn is None or bn.op_type != "BatchNormalization" or _attr(bn, "training_mode", 0):
            continue
        gamma, beta = g.const(bn.input[1]), g.const(bn.input[2])
        if gamma is not None and beta is not None:
            stats[_key(node)] = (beta.astype(np.float64), np.abs(gamma.astype(np.float64)))
    return stats


# ---------------------------------------------------------------------------------- pairs


# Per-channel positively homogeneous ops that may sit between L1 and L2 (besides Relu / ReLU6).
_POOLS = ("MaxPool", "GlobalAveragePool", "Flatten")


class _Pair:
    """L1 -> [Relu | ReLU6] [pooling] -> L2: ``between`` are the nodes in between, ``act`` the
    activation among them (if any)."""

    def __init__(self, l1: onnx.NodeProto, between: list[onnx.NodeProto], l2: onnx.NodeProto):
        self.l1, self.between, self.l2 = l1, between, l2
        acts = [n for n in between if n.op_type not in _POOLS]
        self.act = acts[0] if acts else None

    def label(self) -> str:
        return " -> ".join([_key(self.l1), *(n.op_type for n in self.between), _key(self.l2)])


def _conv_kind(g: _Graph, node: onnx.NodeProto) -> str | None:
    """'full' (group-1 Conv, or a Gemm y = x W^T + b), 'depthwise' (one input channel per
    group), or None."""
    if node.op_type not in ("Conv", "Gemm") or not g.private_weight(node, 1):
        return None
    if len(node.input) > 2 and node.input[2] and not g.private_weight(node, 2):
        return None
    if node.op_type == "Gemm":
        plain = _attr(node, "alpha", 1.0) == 1.0 and _attr(node, "beta", 1.0) == 1.0
        return (
            "full" if plain and not _attr(node, "transA", 0) and _attr(node, "transB", 0) else None
        )
    w = g.const(node.input[1])
    group = _attr(node, "group", 1)
    if group == 1:
        return "full"
    if w.shape[1] == 1 and group == w.shape[0]:
        return "depthwise"
    return None


def _is_relu6(g: _Graph, node: onnx.NodeProto) -> bool:
    if node.op_type != "Clip":
        return False
    lo = g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    hi = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return lo is not None and hi is not None and float(lo) == 0.0 and float(hi) == 6.0


def _passes_channels(g: _Graph, node: onnx.NodeProto, between: list[onnx.NodeProto]) -> bool:
    """``node`` maps channel i to channel i and commutes with a positive per-channel scale."""
    if len(node.output) != 1:
        return False
    if node.op_type == "Flatten":  # [N, C, 1, 1] -> [N, C] only (right after a global pool)
        return (
            bool(between)
            and between[-1].op_type == "GlobalAveragePool"
            and (_attr(node, "axis", 1) == 1)
        )
    return node.op_type in ("Relu", "MaxPool", "GlobalAveragePool") or _is_relu6(g, node)


def find_pairs(model: onnx.ModelProto) -> tuple[list[_Pair], list[str]]:
    """Equalizable ``Conv -> [Relu | ReLU6] [MaxPool | GlobalAveragePool + Flatten] ->
    Conv | Gemm`` pairs and ``Gemm -> [Relu] -> Gemm`` (everything in between is positively
    homogeneous per channel), and near-misses with reasons."""
    g = _Graph(model)
    pairs, declined = [], []
    for l1 in model.graph.node:
        if l1.op_type not in ("Conv", "Gemm"):
            continue
        between: list[onnx.NodeProto] = []
        nxt = g.single_consumer(l1.output[0])
        while nxt is not None and len(between) < 4 and _passes_channels(g, nxt, between):
            between.append(nxt)
            nxt = g.single_consumer(nxt.output[0])
        if nxt is None or nxt.op_type not in ("Conv", "Gemm"):
            continue
        if sum(n.op_type not in _POOLS for n in between) > 1:
            continue
        if (
            nxt.op_type == "Gemm"
            and l1.op_type == "Conv"
            and not any(n.op_type == "Flatten" for n in between)
        ):
            continue
        k1, k2 = _conv_kind(g, l1), _conv_kind(g, nxt)
        if k1 is None or k2 is None:
            declined.append(
                f"{_key(l1)} -> {_key(nxt)}: grouped conv, Gemm with transA/alpha/beta/no "
                "transB, or shared/non-constant weight"
            )
            continue
        pairs.append(_Pair(l1, between, nxt))
    return pairs, declined


# ---------------------------------------------------------------------------- the rewrites


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


def _pairs_in(model: onnx.ModelProto, labels: Sequence[tuple[str, str]]) -> list[_Pair]:
    by = {(_key(p.l1), _key(p.l2)): p for p in find_pairs(model)[0]}
    return [by[k] for k in labels if k in by]


def relu6_to_relu(model: onnx.ModelProto, pairs: Sequence[_Pair]) -> tuple[onnx.ModelProto, int]:
    out = _copy(model)
    targets = {_key(p.act) for p in pairs if p.act is not None and p.act.op_type == "Clip"}
    n = 0
    for node in out.graph.node:
        if node.op_type == "Clip" and _key(node) in targets:
            node.op_type = "Relu"
            del node.input[1:]
            n += 1
    return out, n


def _weights(g: _Graph, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray | None]:
    w = g.const(node.input[1]).astype(np.float64)
    b = g.const(node.input[2]).astype(np.float64) if len(node.input) > 2 and node.input[2] else None
    return w, b


def _in_ranges(w2: np.ndarray, kind: str) -> np.ndarray:
    """Range of each input channel of L2's weight."""
    if kind == "depthwise":
        return np.abs(w2).reshape(w2.shape[0], -1).max(1)
    return np.abs(np.moveaxis(w2, 1, 0)).reshape(w2.shape[1], -1).max(1)


def _scale_in(w2: np.ndarray, s: np.ndarray, kind: str) -> np.ndarray:
    shape = (-1,) + (1,) * (w2.ndim - 1) if kind == "depthwise" else (1, -1) + (1,) * (w2.ndim - 2)
    return w2 * s.reshape(shape)


def equalize(
    model: onnx.ModelProto, pairs: Sequence[_Pair], stats: Stats
) -> tuple[onnx.ModelProto, dict]:
    """Cross-layer equalization of ``pairs`` (found in ``model``), iterated to convergence;
    ``stats`` of each L1 are divided by its scales."""
    out = _copy(model)
    g = _Graph(out)
    nodes = {_key(n): n for n in out.graph.node}
    w: dict[str, np.ndarray] = {}
    b: dict[str, np.ndarray | None] = {}
    kind = {}
    for p in pairs:
        for k in (_key(p.l1), _key(p.l2)):
            if k not in w:
                w[k], b[k] = _weights(g, nodes[k])
                kind[k] = _conv_kind(g, nodes[k])
    total = {_key(p.l1): np.ones(w[_key(p.l1)].shape[0]) for p in pairs}
    iters, worst = 0, 0.0
    for iters in range(1, CLE_MAX_ITERS + 1):  # noqa: B007 - reported
        worst = 0.0
        for p in pairs:
            n1, n2 = _key(p.l1), _key(p.l2)
            r1 = np.abs(w[n1]).reshape(w[n1].shape[0], -1).max(1)
            r2 = _in_ranges(w[n2], kind[n2])
            ok = (r1 > 0) & (r2 > 0)
            s = np.where(ok, np.sqrt(np.where(ok, r1, 1) / np.where(ok, r2, 1)), 1.0)
            w[n1] = w[n1] / s.reshape((-1,) + (1,) * (w[n1].ndim - 1))
            if b[n1] is not None:
                b[n1] = b[n1] / s
            w[n2] = _scale_in(w[n2], s, kind[n2])
            total[n1] *= s
            worst = max(worst, float(np.abs(np.log(s)).max()))
        if worst < CLE_CONVERGED:
            break
    for name in w:
        node = nodes[name]
        g.set(node.input[1], w[name].astype(np.float32))
        if b[name] is not None:
            g.set(node.input[2], b[name].astype(np.float32))
    for n1, s in total.items():
        if n1 in stats:
            beta, gamma = stats[n1]
            stats[n1] = (beta / s, gamma / s)
    scales = np.concatenate(list(total.values())) if total else np.ones(1)
    return out, {"iterations": iters, "last_max_abs_log_scale": worst,
                 "scale_range": [float(scales.min()), float(scales.max())]}  # fmt: skip


def absorb_bias(
    model: onnx.ModelProto,
    pairs: Sequence[_Pair],
    stats: Stats,
    observed_min: dict[str, np.ndarray] | None,
) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """High-bias absorption for ``Conv -> Relu -> unpadded Conv`` pairs. Returns the model, the
    absorbed pairs and the declined ones (with reasons)."""
    out = _copy(model)
    g = _Graph(out)
    nodes = {_key(n): n for n in out.graph.node}
    done, declined = [], []
    for p in pairs:
        l1, l2 = nodes[_key(p.l1)], nodes[_key(p.l2)]
        if p.act is None or p.act.op_type != "Relu":
            continue
        if any(_attr(l2, "pads", [0]) or [0]) or _attr(l2, "auto_pad", b"NOTSET") not in (
            b"NOTSET",
            b"VALID",
        ):
            declined.append(f"{p.label()}: the second conv pads its input (border not shifted)")
            continue
        if observed_min is not None and l1.output[0] in observed_min:
            c = np.maximum(0.0, observed_min[l1.output[0]])
        elif _key(l1) in stats:
            beta, gamma = stats[_key(l1)]
            c = np.maximum(0.0, beta - ABSORB_SIGMAS * gamma)
        else:
            declined.append(f"{p.label()}: no BatchNorm statistics and no calibration data")
            continue
        if not np.any(c > 0):
            continue
        w1, b1 = _weights(g, l1)
        w2, b2 = _weights(g, l2)
        b1 = np.zeros(w1.shape[0]) if b1 is None else b1
        b2 = np.zeros(w2.shape[0]) if b2 is None else b2
        if _conv_kind(g, l2) == "depthwise":
            shift = w2.reshape(w2.shape[0], -1).sum(1) * c
        else:
            shift = w2.sum(axis=tuple(range(2, w2.ndim))) @ c
        _set_bias(g, l1, b1 - c)
        _set_bias(g, l2, b2 + shift)
        if _key(l1) in stats:
            beta, gamma = stats[_key(l1)]
            stats[_key(l1)] = (beta - c, gamma)
        done.append(p.label())
    return out, done, declined


def _set_bias(g: _Graph, node: onnx.NodeProto, bias: np.ndarray) -> None:
    if len(node.input) > 2 and node.input[2]:
        g.set(node.input[2], bias.astype(np.float32))
        return
    base = f"{_key(node)}_bias".strip("/").replace("/", "_")
    name = g.add_init(base, bias.astype(np.float32))
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name


# ------------------------------------------------------------------------- verification


def _outputs(model: onnx.ModelProto, samples: Sequence[dict], names: Sequence[str] = ()):
    """Per-sample onnxruntime outputs (graph optimizations off); extra intermediate ``names``."""
    from edgec.verify import ort_session

    probe = model
    if names:
        probe = _copy(model)
        have = {o.name for o in probe.graph.output}
        probe.graph.output.extend(
            onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
            for n in names
            if n not in have
        )
    sess = ort_session(probe)
    keys = [o.name for o in sess.get_outputs()]
    return [dict(zip(keys, sess.run(keys, dict(s)), strict=True)) for s in samples]


def _change(before: onnx.ModelProto, after: onnx.ModelProto, samples: Sequence[dict]) -> dict:
    from edgec.quant import accuracy

    m = accuracy.compare(_outputs(after, samples), _outputs(before, samples))
    return accuracy.summary(m)


# ------------------------------------------------------------------------------- apply


def _clipped_fraction(pairs: Sequence[_Pair], stats: Stats) -> float | None:
    """The largest mean (over channels) P(z > 6), z ~ N(beta, gamma^2), over the ReLU6s of
    ``pairs`` whose conv has BN statistics (None: no statistics)."""
    worst = None
    for p in pairs:
        if p.act is not None and p.act.op_type == "Clip" and _key(p.l1) in stats:
            beta, gamma = stats[_key(p.l1)]
            frac = float(np.mean(1 - _cdf((6.0 - beta) / np.maximum(gamma, 1e-12))))
            worst = frac if worst is None else max(worst, frac)
    return worst


def apply(
    model: onnx.ModelProto,
    *,
    bn: Stats,
    samples: Sequence[dict],
    probe: Sequence[dict],
    log: Log = lambda _: None,
) -> tuple[onnx.ModelProto, dict]:
    """ReLU6 -> ReLU, CLE and bias absorption on the fp32 ``model``. ``samples`` are real
    calibration samples (empty: data-free); the exact steps are checked on ``probe`` samples
    (any inputs). ``bn`` is updated to follow the rewrites."""
    from edgec.passes import PASS_TOLERANCE

    pairs, declined = find_pairs(model)
    labels = [(_key(p.l1), _key(p.l2)) for p in pairs]
    report: dict = {"pairs": [p.label() for p in pairs], "declined": declined,
                    "bn_statistics": len(bn), "data": "calibration samples" if samples
                    else "none (data-free)"}  # fmt: skip
    if not pairs:
        report["status"] = "no equalizable Conv -> Conv pairs"
        return model, report
    steps = report["steps"] = {}
    relu6, n = relu6_to_relu(model, pairs)
    if n:
        step = steps["relu6_to_relu"] = {"replaced": n}
        if samples:  # real data: measure the change
            step["change"] = _change(model, relu6, samples[:64])
            keep = step["change"]["min_cosine"] >= RELU6_MIN_COSINE
            why = f"worst cosine on calibration samples {step['change']['min_cosine']:.6f}"
        else:  # data-free: the share of activations above 6 that BN statistics predict
            frac = _clipped_fraction(pairs, bn)
            step["expected_clipped_fraction"] = frac
            keep = frac is None or frac <= RELU6_MAX_CLIPPED
            why = (
                "no data and no BatchNorm statistics: replaced as in the paper"
                if frac is None
                else f"BatchNorm statistics predict {100 * frac:.3g}% of activations above 6"
            )
        step["status"] = "applied" if keep else "reverted"
        if keep:
            model = relu6
        log(f"dfq: ReLU6 -> ReLU on {n} activation(s): {why}" + ("" if keep else " (reverted)"))
    pairs = [p for p in _pairs_in(model, labels) if p.act is None or p.act.op_type == "Relu"]
    if not pairs:
        report["status"] = "no pairs left to equalize"
        return model, report
    saved = {k: v for k, v in bn.items()}
    cle, info = equalize(model, pairs, bn)
    change = _change(model, cle, probe)
    ok = change["scaled_err"] <= PASS_TOLERANCE
    steps["cross_layer_equalization"] = {"pairs": len(pairs), **info, "change": change,
                                         "status": "applied" if ok else "reverted"}  # fmt: skip
    log(f"dfq: cross-layer equalization of {len(pairs)} pair(s), {info['iterations']} "
        f"iteration(s), scaled error {change['scaled_err']:.2g}"
        + ("" if ok else " (reverted)"))  # fmt: skip
    if not ok:
        bn.clear()
        bn.update(saved)
        return model, report
    model = cle
    pairs = _pairs_in(model, labels)
    observed = None
    if samples:
        names = [p.l1.output[0] for p in pairs]
        observed = {}
        for outs in _outputs(model, samples, names):
            for n_ in names:
                m = np.moveaxis(outs[n_], 1, 0).reshape(outs[n_].shape[1], -1).min(1)
                observed[n_] = np.minimum(observed.get(n_, m), m)
    saved = {k: v for k, v in bn.items()}
    absorbed, done, why = absorb_bias(model, pairs, bn, observed)
    if done:
        change = _change(model, absorbed, probe)
        ok = change["scaled_err"] <= ABSORB_TOLERANCE
        steps["bias_absorption"] = {"pairs": done, "declined": why, "change": change,
                                    "source": "calibration minima" if observed else
                                    f"BatchNorm beta - {ABSORB_SIGMAS:g} gamma",
                                    "status": "applied" if ok else "reverted"}  # fmt: skip
        log(f"dfq: bias absorption on {len(done)} pair(s), scaled error "
            f"{change['scaled_err']:.2g}" + ("" if ok else " (reverted)"))  # fmt: skip
        if ok:
            model = absorbed
        else:
            bn.clear()
            bn.update(saved)
    else:
        steps["bias_absorption"] = {"pairs": [], "declined": why, "status": "unchanged"}
    return model, report


# ----------------------------------------------------------------------- bias correction


def _phi(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def relu_mean(beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """E[ReLU(z)] for z ~ N(beta, gamma^2), per channel (gamma = 0: ReLU(beta))."""
    g = np.maximum(gamma, 1e-12)
    t = beta / g
    return np.where(gamma > 0, g * _phi(t) + beta * _cdf(t), np.maximum(beta, 0))


def _analytic_mean(g: _Graph, tensor: str, stats: Stats) -> np.ndarray | None:
    """E[x] per channel of ``tensor`` from BN statistics: a BN output, ReLU or ReLU6 of one,
    possibly behind GlobalAveragePool / Flatten (which keep per-channel means)."""
    node = g.producer.get(tensor)
    if node is None:
        return None
    if node.op_type in ("GlobalAveragePool", "Flatten"):
        return _analytic_mean(g, node.input[0], stats)
    if node.op_type in ("Conv", "Gemm") and _key(node) in stats:
        return stats[_key(node)][0]
    src = g.producer.get(node.input[0]) if node.input else None
    if src is None or src.op_type not in ("Conv", "Gemm") or _key(src) not in stats:
        return None
    beta, gamma = stats[_key(src)]
    if node.op_type == "Relu":
        return relu_mean(beta, gamma)
    if _is_relu6(g, node):
        return relu_mean(beta, gamma) - relu_mean(beta - 6.0, gamma)
    return None


def bias_correction(
    qdq: onnx.ModelProto,
    fp32: onnx.ModelProto,
    *,
    bn: Stats,
    samples: Sequence[dict],
    log: Log = lambda _: None,
) -> tuple[onnx.ModelProto, dict]:
    """Correct the int32 bias of every quantized Conv/Gemm for its weights' quantization error
    (``b -= (W_q - W) E[x]``). ``samples``: real data for E[x]; empty: BN statistics."""
    out = _copy(qdq)
    q, f = _Graph(out), _Graph(fp32)
    # the QDQ model keeps node names (edgec.quant names every node); an activation it removed
    # may have given its output name to the conv
    fnodes = {n.name: n for n in fp32.graph.node if n.name}
    layers = []
    for node in out.graph.node:
        fnode = fnodes.get(node.name)
        if node.op_type not in ("Conv", "Gemm") or fnode is None or len(node.input) < 3:
            continue
        if fnode.op_type != node.op_type:
            continue
        wdq, bdq = q.producer.get(node.input[1]), q.producer.get(node.input[2])
        if not (wdq and bdq and wdq.op_type == bdq.op_type == "DequantizeLinear"):
            continue
        if node.op_type == "Gemm" and (_attr(node, "transA", 0) or not _attr(node, "transB", 0)):
            continue
        layers.append((node, fnode, wdq, bdq))
    means: dict[str, np.ndarray] = {}
    if samples:
        names = sorted({fn.input[0] for _, fn, _, _ in layers})
        sums: dict[str, np.ndarray] = {}
        for outs in _outputs(fp32, samples, names):
            for n in names:
                x = outs[n]
                sums[n] = sums.get(n, 0) + np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).mean(1)
        means = {n: v / len(samples) for n, v in sums.items()}
    corrected, skipped = [], []
    for node, fnode, wdq, bdq in layers:
        ex = means.get(fnode.input[0]) if samples else _analytic_mean(f, fnode.input[0], bn)
        if ex is None:
            skipped.append(f"{_key(node)}: no E[x] for its input (no BatchNorm statistics)")
            continue
        w = f.const(fnode.input[1]).astype(np.float64)
        wq = _dequantize(q, wdq, w.ndim)
        eps = wq - w
        if node.op_type == "Conv":
            if _attr(node, "group", 1) == 1:
                delta = eps.sum(axis=tuple(range(2, eps.ndim))) @ ex
            else:  # depthwise: output channel o reads input channel o
                delta = eps.reshape(eps.shape[0], -1).sum(1) * ex
        else:
            delta = eps @ ex
        bq = q.const(bdq.input[0]).astype(np.int64)
        scale = q.const(bdq.input[1]).astype(np.float64)
        new = np.clip(np.round(bq - delta / scale), -(2**31), 2**31 - 1).astype(np.int32)
        q.set(bdq.input[0], new)
        corrected.append(_key(node))
    source = (f"E[x] measured on {len(samples)} calibration sample(s)" if samples
              else "E[x] analytic from BatchNorm statistics (data-free)")  # fmt: skip
    log(f"dfq: bias correction of {len(corrected)} layer(s) ({source})")
    return out, {"layers": corrected, "skipped": skipped, "source": source}


def _dequantize(g: _Graph, dq: onnx.NodeProto, ndim: int) -> np.ndarray:
    x = g.const(dq.input[0]).astype(np.float64)
    scale = g.const(dq.input[1]).astype(np.float64)
    zp = g.const(dq.input[2]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    axis = _attr(dq, "axis", 1)
    if np.ndim(scale) == 1 and scale.size > 1:
        shape = [1] * ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zp = np.reshape(zp, shape) if np.ndim(zp) == 1 else zp
    return (x - zp) * scale
