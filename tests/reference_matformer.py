"""A plain numpy Matformer forward pass, written edge by edge as in the paper.

This is the test oracle for :mod:`crystalprop.model`. It follows the original PyTorch code
(YKQ98/Matformer, ``matformer/models/transformer.py`` ``MatformerConv`` and
``matformer/models/pyg_att.py`` ``Matformer``) literally: every directed edge j -> i
(``src`` = j, ``dst`` = i) builds its own concatenations

    alpha_ij = (q_i ‖ q_i ‖ q_i) ⊙ (k_i ‖ k_j ‖ e_ij) / √(3C)
    m_ij     = LN_C(W_msg ((W_upd (v_i ‖ v_j ‖ e_ij) + b_upd) ⊙ σ(LN_3C(alpha_ij))) + b_msg)

and the edge features come from each edge's own distance, with none of the factorisation
or distinct-distance sharing of the MindSpore model. Everything is float64.

Parameters are a dict ``name -> array`` as read from the MindSpore network with
``{p.name: p.asnumpy() for p in net.get_parameters()}``; Dense weights are (out, in), so a
linear map is ``x @ W.T + b``.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

EPS = 1e-5  # LayerNorm and BatchNorm epsilon (PyTorch defaults, as in the original)


def _linear(params: Mapping[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    """PyTorch-style Linear: y = x W^T (+ b)."""
    y = x @ np.asarray(params[f"{name}.weight"], dtype=np.float64).T
    bias = params.get(f"{name}.bias")
    return y if bias is None else y + np.asarray(bias, dtype=np.float64)


def _layer_norm(params: Mapping[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis with biased variance, then gamma/beta."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    gamma = np.asarray(params[f"{name}.gamma"], dtype=np.float64)
    beta = np.asarray(params[f"{name}.beta"], dtype=np.float64)
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _silu(x: np.ndarray) -> np.ndarray:
    return x * _sigmoid(x)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _batch_norm(
    params: Mapping[str, np.ndarray], name: str, x: np.ndarray, training: bool, stats: list | None
) -> np.ndarray:
    """BatchNorm1d over atoms: batch statistics (biased variance) in training, moving ones otherwise."""
    if training:
        mean = x.mean(axis=0)
        var = x.var(axis=0)  # biased, as PyTorch normalises with
        if stats is not None:
            stats.append({"name": name, "mean": mean, "var": var, "unbiased_var": x.var(axis=0, ddof=1)})
    else:
        mean = np.asarray(params[f"{name}.moving_mean"], dtype=np.float64)
        var = np.asarray(params[f"{name}.moving_variance"], dtype=np.float64)
    gamma = np.asarray(params[f"{name}.gamma"], dtype=np.float64)
    beta = np.asarray(params[f"{name}.beta"], dtype=np.float64)
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


def rbf_expansion(distances: np.ndarray, bins: int, vmax: float = 8.0, vmin: float = 0.0) -> np.ndarray:
    """exp(-γ (d - μ_k)²), μ = linspace(vmin, vmax, bins), γ = 1 / mean(diff(μ))."""
    centers = np.linspace(vmin, vmax, bins)
    gamma = 1.0 / np.diff(centers).mean()
    return np.exp(-gamma * (distances[:, None] - centers[None, :]) ** 2)


def matformer_conv(
    params: Mapping[str, np.ndarray],
    prefix: str,
    x: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    edge_attr: np.ndarray,
    heads: int,
    training: bool,
    stats: list | None = None,
) -> np.ndarray:
    """One MatformerConv layer. x: (N, C), edge_attr: (E, C) per edge -> (N, C)."""
    n_atoms, c = x.shape
    h = heads
    n_edges = src.shape[0]
    query = _linear(params, f"{prefix}.lin_query", x).reshape(n_atoms, h, c)
    key = _linear(params, f"{prefix}.lin_key", x).reshape(n_atoms, h, c)
    value = _linear(params, f"{prefix}.lin_value", x).reshape(n_atoms, h, c)
    edge = _linear(params, f"{prefix}.lin_edge", edge_attr).reshape(n_edges, h, c)

    # message(): PyG's x_i is the target (dst), x_j the source (src)
    query_i, key_i, key_j = query[dst], key[dst], key[src]
    value_i, value_j = value[dst], value[src]
    query_cat = np.concatenate([query_i, query_i, query_i], axis=-1)  # (E, H, 3C)
    key_cat = np.concatenate([key_i, key_j, edge], axis=-1)
    alpha = query_cat * key_cat / math.sqrt(3 * c)
    gate = _sigmoid(_layer_norm(params, f"{prefix}.layer_norm", alpha))
    out = np.concatenate([value_i, value_j, edge], axis=-1)  # (E, H, 3C)
    out = _linear(params, f"{prefix}.lin_msg_update", out) * gate
    message = _layer_norm(params, f"{prefix}.msg_norm", _linear(params, f"{prefix}.msg_layer", out))  # (E, H, C)

    # aggregate "add" at the target, one edge at a time
    aggregated = np.zeros((n_atoms, h, c))
    np.add.at(aggregated, dst, message)
    out = _linear(params, f"{prefix}.lin_concate", aggregated.reshape(n_atoms, h * c))
    out = _silu(_batch_norm(params, f"{prefix}.bn", out, training, stats))
    return out + _linear(params, f"{prefix}.lin_skip", x)


def matformer_forward(
    params: Mapping[str, np.ndarray],
    batch,
    heads: int,
    training: bool = False,
    rbf_max: float = 8.0,
    stats: list | None = None,
) -> np.ndarray:
    """Predictions (B,) for a :class:`crystalprop.graph.batch.GraphBatch`.

    Per-edge distances are ``batch.distances[batch.distance_index]``. The number of layers
    and of RBF bins are read from the parameter names and shapes. When ``stats`` is a list,
    training-mode BatchNorm appends each layer's batch mean and variances to it.
    """
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    n_layers = len({k.split(".")[1] for k in params if k.startswith("att_layers.")})
    bins = params["edge_in.weight"].shape[1]
    # expand merged edges back to one row per directed edge of the graphs
    repeats = np.asarray(batch.edge_weight).astype(np.int64)
    src = np.repeat(np.asarray(batch.src, dtype=np.int64), repeats)
    dst = np.repeat(np.asarray(batch.dst, dtype=np.int64), repeats)
    distance_index = np.repeat(np.asarray(batch.distance_index, dtype=np.int64), repeats)
    distances = np.asarray(batch.distances, dtype=np.float64)[distance_index]

    x = _linear(params, "atom_embedding", np.asarray(batch.node_features, dtype=np.float64))
    edge_attr = _linear(params, "edge_in", rbf_expansion(distances, bins, rbf_max))
    edge_attr = _linear(params, "edge_out", _softplus(edge_attr))  # (E, C), one row per edge
    for layer in range(n_layers):
        x = matformer_conv(params, f"att_layers.{layer}", x, src, dst, edge_attr, heads, training, stats)

    node_graph = np.asarray(batch.node_graph, dtype=np.int64)
    n_graphs = int(node_graph.max()) + 1
    sums = np.zeros((n_graphs, x.shape[1]))
    np.add.at(sums, node_graph, x)
    pooled = sums / np.bincount(node_graph, minlength=n_graphs)[:, None]
    hidden = _silu(_linear(params, "fc", pooled))
    return _linear(params, "fc_out", hidden)[:, 0]
