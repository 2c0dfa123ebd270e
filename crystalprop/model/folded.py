"""K Matformer members' weights stacked and folded for inference, in numpy (no MindSpore).

Both inference engines start from these arrays: the MindSpore stacked network
(:mod:`crystalprop.model.stacked`) and the numpy one (:mod:`crystalprop.model.numpy_stacked`).
Every map gains a leading member axis, w (K, in, out) for x (K, ·, in) @ w and b (K, 1, out),
and the linear steps that follow one another are folded into one map: BatchNorm's moving
statistics into the head projection, the query scale 1/√(3C) into the query map, the value map
into the update's per-atom terms and the edge embedding's last map into each layer's edge map.
The folding is done in float64; the engines run in float32.

Notation as in :mod:`crystalprop.model.layers`: C features per head, H heads, K members.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from crystalprop.model.checkpoint import as_array, checked_params
from crystalprop.model.config import BATCH_NORM_EPS, ModelConfig

Members = Sequence[Mapping[str, np.ndarray]]
Map = tuple[np.ndarray, np.ndarray]
"""A stacked affine map: w (K, in, out) and b (K, 1, out)."""


def stack(members: Members, name: str) -> np.ndarray:
    """(K, ...) the members' values of parameter ``name``, in float64 for the folding."""
    return np.stack([np.asarray(m[name], dtype=np.float64) for m in members])


def dense(members: Members, prefix: str, bias: bool = True) -> Map:
    """A Dense layer's stacked weights (MindSpore stores weight as (out, in)): w (K, in, out), b (K, 1, out)."""
    w = stack(members, f"{prefix}.weight").transpose(0, 2, 1)
    b = stack(members, f"{prefix}.bias")[:, None, :] if bias else np.zeros_like(w[:, :1])
    return w, b


def wide(layer: Map) -> tuple[np.ndarray, np.ndarray]:
    """For an input shared by all members: (in, K*out) and (K*out,), member-major columns."""
    w, b = layer
    k, fan_in, out = w.shape
    return w.transpose(1, 0, 2).reshape(fan_in, k * out), b.reshape(k * out)


def per_head(layer: Map, heads: int, then: np.ndarray, bias: np.ndarray) -> Map:
    """A map x -> layer(x), split into heads of C columns, each followed by ``then`` (K, C, F) and
    ``bias`` (K, 1, F), as one map (K, in, H*F), (K, 1, H*F): row n of the product, viewed as H rows
    of F, is each head's result."""
    w, b = layer
    c = w.shape[2] // heads
    return (np.concatenate([w[:, :, h * c : (h + 1) * c] @ then for h in range(heads)], axis=2),
            np.concatenate([b[:, :, h * c : (h + 1) * c] @ then + bias for h in range(heads)], axis=2))


@dataclass
class FoldedLayer:
    """One attention layer of K members (:class:`crystalprop.model.layers.MatformerConv`), folded.

    Maps of x (K, N, C): ``query`` (scaled by 1/√(3C)), ``key`` -> (K, N, H*C); ``upd_i``, ``upd_j``
    (the value map, then the update's v_i and v_j blocks; upd_i carries its bias) -> (K, N, H*3C);
    ``skip`` -> (K, N, C). ``edge`` maps the bond-length features before edge_out (K, D, C) to
    (K, D, H*C); ``upd_e`` (K, C, 3C) their per-head rows to the update's e block. ``msg`` (K, 3C, C)
    is the per-edge message product, with ``msg_bias``, ``msg_gamma``, ``msg_beta`` (K, C) its
    LayerNorm; ``gate_gamma``, ``gate_beta`` (K, 3C) the attention LayerNorm; ``concate`` the head
    projection with inference BatchNorm, (K, H*C) -> (K, C).
    """

    query: Map
    key: Map
    upd_i: Map
    upd_j: Map
    upd_e: np.ndarray
    edge: Map
    msg: np.ndarray
    msg_bias: np.ndarray
    msg_gamma: np.ndarray
    msg_beta: np.ndarray
    gate_gamma: np.ndarray
    gate_beta: np.ndarray
    concate: Map
    skip: Map

    @classmethod
    def fold(cls, members: Members, prefix: str, config: ModelConfig) -> "FoldedLayer":
        """The layer ``prefix`` (``att_layers.<i>``) of every member."""
        c, h = config.features, config.heads
        scale = 1.0 / math.sqrt(3 * c)
        query_w, query_b = dense(members, f"{prefix}.lin_query")
        update_w, update_b = dense(members, f"{prefix}.lin_msg_update")  # (K, 3C in, 3C out)
        value = dense(members, f"{prefix}.lin_value")
        edge_out_w, edge_out_b = dense(members, "edge_out")
        edge_w, _ = dense(members, f"{prefix}.lin_edge", bias=False)
        return cls(
            query=(query_w * scale, query_b * scale),
            key=dense(members, f"{prefix}.lin_key"),
            upd_i=per_head(value, h, update_w[:, :c], update_b),
            upd_j=per_head(value, h, update_w[:, c : 2 * c], np.zeros_like(update_b)),
            upd_e=update_w[:, 2 * c :],
            edge=(edge_out_w @ edge_w, edge_out_b @ edge_w),  # edge_out, then lin_edge
            msg=dense(members, f"{prefix}.msg_layer")[0],
            msg_bias=stack(members, f"{prefix}.msg_layer.bias"),
            msg_gamma=stack(members, f"{prefix}.msg_norm.gamma"),
            msg_beta=stack(members, f"{prefix}.msg_norm.beta"),
            gate_gamma=stack(members, f"{prefix}.layer_norm.gamma"),
            gate_beta=stack(members, f"{prefix}.layer_norm.beta"),
            concate=_concate_with_batch_norm(members, prefix),
            skip=dense(members, f"{prefix}.lin_skip"),
        )


def _concate_with_batch_norm(members: Members, prefix: str) -> Map:
    """lin_concate followed by inference BatchNorm, (z - mean) / √(var + eps) · γ + β, as one map."""
    w, b = dense(members, f"{prefix}.lin_concate")
    factor = stack(members, f"{prefix}.bn.gamma") / np.sqrt(stack(members, f"{prefix}.bn.moving_variance")
                                                             + BATCH_NORM_EPS)
    shift = stack(members, f"{prefix}.bn.beta") - stack(members, f"{prefix}.bn.moving_mean") * factor
    return w * factor[:, None, :], b * factor[:, None, :] + shift[:, None, :]


@dataclass
class FoldedMatformer:
    """Every weight of K members of one configuration, folded: ``atom`` and ``edge_in`` as wide maps
    of the shared inputs ((in, K*C), (K*C,)), the layers, and the readout ``fc`` (K, C, F) and
    ``fc_out`` (K, F, 1)."""

    config: ModelConfig
    members: int
    atom: tuple[np.ndarray, np.ndarray]
    edge_in: tuple[np.ndarray, np.ndarray]
    layers: list[FoldedLayer]
    fc: Map
    fc_out: Map

    @classmethod
    def fold(cls, config: ModelConfig, members: Members) -> "FoldedMatformer":
        """``members``: each member's parameters by Matformer's parameter names (checked elsewhere,
        :func:`crystalprop.model.checkpoint.checked_params`)."""
        if not members:
            raise ValueError("a stacked network needs at least one member")
        return cls(config, len(members), wide(dense(members, "atom_embedding")), wide(dense(members, "edge_in")),
                   [FoldedLayer.fold(members, f"att_layers.{i}", config) for i in range(config.layers)],
                   dense(members, "fc"), dense(members, "fc_out"))


def member_arrays(config: ModelConfig, members: Sequence[Mapping[str, Any]], path: str | Path) -> list[dict[str, np.ndarray]]:
    """Each member's parameters (arrays or MindSpore Parameters) as numpy arrays by name, checked
    against ``config`` by :func:`crystalprop.model.checkpoint.checked_params`, which refuses a missing
    or mis-shaped parameter naming ``path``."""
    shapes = config.parameter_shapes()
    return [dict(zip(shapes, map(as_array, checked_params(shapes, m, path)), strict=True)) for m in members]


def stack_members(config: ModelConfig, checkpoints: Sequence[tuple[Sequence[Mapping[str, Any]], str | Path]]
                  ) -> tuple[list[dict[str, np.ndarray]], list[list[int]]]:
    """Every distinct member of ``checkpoints``, (members' parameter dicts, path) pairs of configuration
    ``config``, checked (:func:`member_arrays`), in order, and the indices of each checkpoint's members
    among them. A network stored in two checkpoints (the bulk-modulus members inside a shear-modulus
    model that multiplies them by G/K) is stacked, and so run, once."""
    arrays: list[dict[str, np.ndarray]] = []
    seen: dict[bytes, int] = {}
    rows = []
    for members, path in checkpoints:
        indices = []
        for member in member_arrays(config, members, path):
            digest = _digest(member)
            if digest not in seen:
                seen[digest] = len(arrays)
                arrays.append(member)
            indices.append(seen[digest])
        rows.append(indices)
    return arrays, rows


def _digest(member: Mapping[str, np.ndarray]) -> bytes:
    """A fingerprint of one member's weights (names, shapes and values)."""
    h = hashlib.blake2b(digest_size=20)
    for name, value in member.items():
        h.update(f"{name}{value.shape}{value.dtype}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.digest()
