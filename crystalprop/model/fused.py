"""Fused CPU kernels: row-wise LayerNorm, Matformer's attention gate, a row scatter-add and a
training-mode BatchNorm, with their gradients.

Each Matformer layer normalises an (edges × heads, 3C) tensor, takes its sigmoid and multiplies
it into the update. On MindSpore's CPU backend the LayerNorm backward kernel alone took over a
third of a training step, and IndexAdd a fifth once that was fixed. ``kernels/fused_ops.cc``
does the same maths row by row, forming the logits and the update as it goes; it is compiled
once per machine with the system C++ compiler into crystalprop's cache folder
(``CRYSTALPROP_KERNELS`` names another) and runs as MindSpore "aot" custom operators. Without a
compiler, on GPU/Ascend, or with ``CRYSTALPROP_FUSED_KERNELS=0``, the operator factories return
None and the layers use MindSpore's own ops (same results to float rounding).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from crystalprop.utils.backend import cpu_threads, mindspore_module
from crystalprop.model import kernel_library
from crystalprop.utils.hashing import file_sha256

ops = mindspore_module().ops  # imported by the layers only, which need MindSpore anyway

_state: dict[str, object] = {}


def library_digest() -> str:
    """What the compiled graphs depend on in the kernels: 'none', or the library file and its
    content hash (part of the compile cache key)."""
    path = library()
    return "none" if path is None else f"{path.name}:{file_sha256(path)}"


def library() -> Path | None:
    """Path of the compiled kernel library, or None where the fused kernels are not used."""
    if "library" not in _state:
        ms = mindspore_module()
        on_cpu = ms.get_context("device_target") == "CPU"
        _state["library"] = kernel_library.compiled() if kernel_library.wanted() and on_cpu else None
    path = _state["library"]
    if path is not None:
        # the library MindSpore opens is this same file, so the setting reaches its kernels
        ctypes.CDLL(str(path)).CrystalpropSetThreads(cpu_threads())
    return path  # type: ignore[return-value]


def _register(inputs: list[str], outputs: list[str], int_inputs: tuple[str, ...] = ()):
    """MindSpore registration of a CPU operator: float32 tensors, int32 for ``int_inputs``."""
    reg = ops.CustomRegOp()
    for i, n in enumerate(inputs):
        reg = reg.input(i, n)
    for i, n in enumerate(outputs):
        reg = reg.output(i, n)
    types = [ops.DataType.I32_Default if n in int_inputs else ops.DataType.F32_Default for n in inputs + outputs]
    return reg.dtype_format(*types).target("CPU").get_op_info()


def _custom(path: Path, name: str, inputs: list[str], outputs: list[str], bprop=None, int_inputs=()):
    """The kernel ``name`` of the library as a MindSpore operator (any row count, dynamic shapes)."""
    ms = mindspore_module()
    dtype = ms.float32 if len(outputs) == 1 else (ms.float32,) * len(outputs)
    return ms.ops.Custom(f"{path}:{name}", out_shape=None, out_dtype=dtype, func_type="aot",
                         reg_info=_register(inputs, outputs, int_inputs), bprop=bprop)


def row_norm_op():
    """``f(x, bias, gamma, beta)``: LayerNorm of x + bias over the last axis of (M, F) rows; None
    where unavailable. The bias is the one of the linear map before it, added here in the same pass.
    bias, gamma and beta are (F,), or (K*F,) for K stacked members (forward only): the rows are
    then K member-major blocks, row m taking member m // (M / K)'s values.
    """
    path = library()
    if path is None:
        return None
    grad = _custom(path, "RowNormGrad", ["x", "bias", "gamma", "beta", "out", "dout"],
                   ["dx", "dbias", "dgamma", "dbeta"])

    def bprop(x, bias, gamma, beta, out, dout):
        return grad(x, bias, gamma, beta, out, dout)

    return _custom(path, "RowNorm", ["x", "bias", "gamma", "beta"], ["out"], bprop)


def attention_gate_op():
    """``f(q, k, e, gamma, beta, ui, uj, ue, ri, rj, re)``, None where unavailable.

    = u ⊙ σ(LN(q_i⊙k_i ‖ q_i⊙k_j ‖ q_i⊙e_r)·γ + β) with u = ui[ri] + uj[rj] + ue[re], on each
    row m with i, j, r = ri[m], rj[m], re[m]: q, k (·, C) per atom, e (·, C) per bond length, the
    update tables ui, uj, ue (·, 3C), their int32 row indices (M,) -> (M, 3C). Neither the
    logits nor u are ever stored; the gradient sums each row's share onto the tables as it goes.
    gamma and beta are (3C,), or (K*3C,) for K stacked members as in :func:`row_norm_op`.
    """
    path = library()
    if path is None:
        return None
    inputs = ["q", "k", "e", "gamma", "beta", "ui", "uj", "ue", "ri", "rj", "re"]
    indices = ("ri", "rj", "re")
    # the gradients on the tables, summed in the kernel: k's from k_i and k_j come apart and are
    # added here, as when each was a scatter of its own
    grad = _custom(path, "AttentionGateGrad", inputs + ["out", "dout"],
                   ["dq", "dki", "dkj", "de", "dgamma", "dbeta", "dui", "duj", "due"], int_inputs=indices)

    def bprop(q, k, e, gamma, beta, ui, uj, ue, ri, rj, re, out, dout):
        dq, dki, dkj, de, dgamma, dbeta, dui, duj, due = grad(q, k, e, gamma, beta, ui, uj, ue, ri, rj, re, out, dout)
        return (dq, dki + dkj, de, dgamma, dbeta, dui, duj, due,
                ops.zeros_like(ri), ops.zeros_like(rj), ops.zeros_like(re))

    return _custom(path, "AttentionGate", inputs, ["out"], bprop, int_inputs=indices)


def message_pass_op():
    """``f(q, k, e, gamma, beta, ui, uj, ue, w, bias, norm_gamma, norm_beta, weight, ri, rj, re)``:
    a stacked Matformer layer's whole message pass for K members, inference only (no gradient);
    None where unavailable.

    Per member k and edge-head row m (with i, j, r = ri[m], rj[m], re[m]): the gated row g of
    :func:`attention_gate_op` (q, k, ui, uj (K*N*H, ·), e, ue (K*D*H, ·), gamma, beta (K*3C,)),
    the message LN_C(g @ w_k + bias_k) · norm_gamma_k + norm_beta_k (w (K*3C, C), the rest
    (K*C,)), added with weight[m // H] (weight (E,)) to output row k*N*H + i -> (K*N*H, C), like q.
    ri, rj, re (E*H,) index one member's tables: every member uses the same rows. Neither the
    (K*E*H, 3C) gated rows nor the messages are stored; threads take whole members.
    """
    path = library()
    if path is None:
        return None
    inputs = ["q", "k", "e", "gamma", "beta", "ui", "uj", "ue", "w", "bias", "norm_gamma", "norm_beta",
              "weight", "ri", "rj", "re"]
    return _custom(path, "MessagePass", inputs, ["out"], int_inputs=("ri", "rj", "re"))


def batch_norm_op():
    """``f(x, gamma, beta) -> (y, mean, var)``: training-mode BatchNorm of x (N, C) with the batch's
    column mean and biased variance (C,), which are returned for the moving statistics and carry no
    gradient; None where unavailable. MindSpore's CPU BatchNorm took about 3 ms for 1,700 x 64 values.
    """
    path = library()
    if path is None:
        return None
    grad = _custom(path, "BatchNormTrainGrad", ["x", "gamma", "beta", "y", "mean", "var", "dy", "dmean", "dvar"],
                   ["dx", "dgamma", "dbeta"])

    def bprop(x, gamma, beta, out, dout):
        return grad(x, gamma, beta, out[0], out[1], out[2], dout[0], dout[1], dout[2])

    return _custom(path, "BatchNormTrain", ["x", "gamma", "beta"], ["y", "mean", "var"], bprop)


def scatter_rows_op():
    """``f(values, index, like)``: zeros shaped like ``like`` (T, W) plus values (M, W) added at
    rows index (M,) int32; None where unavailable. MindSpore's CPU IndexAdd runs on one thread;
    this splits the columns between threads. Its gradient gathers the output gradient's rows.
    """
    path = library()
    if path is None:
        return None

    def bprop(values, index, like, out, dout):
        return ops.gather(dout, index, 0), ops.zeros_like(index), ops.zeros_like(like)

    return _custom(path, "ScatterRowsAdd", ["values", "index", "like"], ["out"], bprop, int_inputs=("index",))


def weighted_scatter_rows_op():
    """``f(values, weight, index, like)``: as :func:`scatter_rows_op` with each row of values
    (M, W) scaled by weight (M,) as it is added, so the scaled rows are never stored; None where
    unavailable. The weight is treated as a constant (no gradient), as for edge multiplicities.
    """
    path = library()
    if path is None:
        return None

    gather_scale = _custom(path, "GatherScaleRowsOp", ["dout", "weight", "index"], ["out"], int_inputs=("index",))

    def bprop(values, weight, index, like, out, dout):
        # d values[m] = weight[m] * dout[index[m]]
        return gather_scale(dout, weight, index), ops.zeros_like(weight), ops.zeros_like(index), ops.zeros_like(like)

    return _custom(path, "WeightedScatterRowsAdd", ["values", "weight", "index", "like"], ["out"], bprop,
                   int_inputs=("index",))


def scale_rows(values, weight):
    """values (M, W) with row m multiplied by weight[m] (M,), in MindSpore ops. The weight is
    tiled to full width first: MindSpore's CPU kernels broadcast an (M, 1) factor about 8 times
    slower than a product of equal shapes."""
    return values * ops.tile(weight.expand_dims(-1), (1, values.shape[1]))
