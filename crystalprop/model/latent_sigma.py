"""σ from how far a structure lies from the training set in the model's own latent space.

An ensemble whose members share their early training makes much the same errors, so their
spread hardly tells a well-predicted structure from a badly predicted one (formation energy:
Spearman(spread, |error|) 0.15-0.21 on the validation split). What does tell them apart is
whether the model has seen crystals like this one, and how well it fitted those: for each
structure, the first member's readout features h = silu(fc(pooled)) (F = fc_features) are
standardised and projected on their leading principal axes (d of them), and

    σ_raw = mean distance to its k nearest training structures × mean |training error| of those k

(both factors rank the validation errors, their product better than either; campaign, session 11).
With a ``prior`` w, a share of the mean error of the whole training set joins the second factor,

    σ_raw = mean distance × (mean |training error| of the k nearest + w × mean |training error| of all),

so that a structure whose nearest training structures were fitted exactly still gets a σ that
grows with its distance (formation energy: within 2σ 89 → 91 %, cross-fitted; campaign, session 26).
The calibration scale of :func:`crystalprop.model.ensemble.calibration_scale` turns σ_raw into σ.

Where the k nearest training structures were all fitted exactly (metals at a band gap of 0 eV), σ_raw is
0 however far they are. So the card keeps the largest mean distance of the structures σ was calibrated on
(``latent_range``): a structure beyond it lies further from the training set than any structure whose
errors the calibration saw, and gets no σ (:func:`crystalprop.model.ensemble.ensemble_output`).

The reference ships inside the checkpoint under ``latent_sigma.<name>``: ``projection`` (F, d)
and ``offset`` (d,), which standardise and project in one affine map, z = h @ projection - offset;
``table`` (N, d) float16, the training structures' z; ``residuals`` (N,) float16, the ensemble's
absolute error on each of them, in the unit of the prediction. For the shipped formation-energy
model (N = 31,623, d = 32) that is 2.1 MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

PREFIX = "latent_sigma."
NEIGHBOURS = 5
DIMENSIONS = 32
QUERY_CHUNK = 256  # query rows per distance block: 256 × N float32, 32 MB for N = 31,623
BLOCK = 128  # training rows per block of the nearest-neighbour search (:func:`k_smallest`)


@dataclass
class LatentReference:
    """The training set as seen by the model's readout, and its errors there."""

    projection: np.ndarray  # (F, d) float32
    offset: np.ndarray  # (d,) float32
    table: np.ndarray  # (N, d) float32
    residuals: np.ndarray  # (N,) float32
    neighbours: int = NEIGHBOURS
    prior: float = 0.0  # w above: the share of the mean training error added to the neighbours'

    def __post_init__(self) -> None:
        table = np.asarray(self.table, np.float32)
        self.residuals = np.asarray(self.residuals, np.float32)
        rows = -(-len(table) // BLOCK) * BLOCK  # whole blocks: rows of zeros at infinite distance
        self._search_table = np.zeros((rows, table.shape[1]), np.float32)
        self._search_table[: len(table)] = table
        self.table = self._search_table[: len(table)]  # a view: the table is held once
        self._table_norms = np.full(rows, np.inf, np.float32)
        self._table_norms[: len(table)] = np.einsum("nd,nd->n", table, table)
        finite = self.residuals[np.isfinite(self.residuals)].astype(np.float64)
        self._prior_error = self.prior * float(finite.mean()) if self.prior and finite.size else 0.0

    @classmethod
    def build(cls, hidden: np.ndarray, residuals: np.ndarray, dimensions: int = DIMENSIONS,
              neighbours: int = NEIGHBOURS, prior: float = 0.0) -> "LatentReference":
        """From the training structures' readout features ``hidden`` (N, F) and the model's absolute
        errors on them (N,): standardise each feature, keep the ``dimensions`` leading principal axes."""
        hidden = np.asarray(hidden, np.float64)
        mean, std = hidden.mean(axis=0), hidden.std(axis=0) + 1e-6
        standard = (hidden - mean) / std
        axes = np.linalg.svd(standard - standard.mean(axis=0), full_matrices=False)[2][:dimensions].T  # (F, d)
        projection = axes / std[:, None]
        offset = (mean / std) @ axes
        table = (hidden @ projection - offset).astype(np.float16)
        return cls(projection.astype(np.float32), offset.astype(np.float32), table,
                   np.asarray(residuals, np.float64).astype(np.float16), neighbours, prior)

    def raw_sigma(self, hidden: np.ndarray) -> np.ndarray:
        """(B, F) readout features -> (B,) uncalibrated σ: mean distance to the k nearest training
        structures times their mean absolute training error (plus the prior's share of all)."""
        return self.sigma_and_distance(hidden)[0]

    def sigma_and_distance(self, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, F) readout features -> the (B,) uncalibrated σ of :meth:`raw_sigma` and its first factor,
        the (B,) mean distance to the k nearest training structures."""
        z = np.asarray(hidden, np.float32) @ self.projection - self.offset  # (B, d)
        sigma, distance = np.empty(len(z), np.float64), np.empty(len(z), np.float64)
        k = min(self.neighbours, len(self.table))
        for start in range(0, len(z), QUERY_CHUNK):
            block = z[start : start + QUERY_CHUNK]
            squared = (np.einsum("bd,bd->b", block, block)[:, None] + self._table_norms
                       - 2.0 * block @ self._search_table.T)  # (b, whole blocks of training rows)
            nearest = k_smallest(squared, k)  # (b, k)
            rows = slice(start, start + len(block))
            # the k distances again, as differences in float64: the expansion above loses digits to cancellation
            # (σ moved by up to 6e-4 relative with the batch a structure came in; within 1e-5 so)
            offsets = block[:, None, :].astype(np.float64) - self._search_table[nearest]  # (b, k, d)
            distance[rows] = np.sqrt(np.einsum("bkd,bkd->bk", offsets, offsets)).mean(axis=1)
            sigma[rows] = distance[rows] * (self.residuals[nearest].mean(axis=1) + self._prior_error)
        return sigma, distance

    def arrays(self) -> dict[str, np.ndarray]:
        """The values to store in a checkpoint, by parameter name."""
        return {f"{PREFIX}projection": self.projection, f"{PREFIX}offset": self.offset,
                f"{PREFIX}table": self.table.astype(np.float16), f"{PREFIX}residuals": self.residuals.astype(np.float16)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any], neighbours: int, path: Any = "checkpoint",
                    prior: float = 0.0) -> "LatentReference":
        """The reference stored in the parameters (arrays or MindSpore Parameters) of checkpoint ``path``."""
        from crystalprop.model.checkpoint import CheckpointError, as_array  # noqa: PLC0415  (imports MindSpore)

        values = {name[len(PREFIX):]: as_array(value) for name, value in params.items() if name.startswith(PREFIX)}
        missing = sorted({"projection", "offset", "table", "residuals"} - set(values))
        if missing:
            raise CheckpointError(f"{path}: its σ comes from a latent reference, but {', '.join(PREFIX + m for m in missing)} "
                                  "is missing from its weights (re-join it with crystalprop ensemble --sigma latent)")
        return cls(values["projection"], values["offset"], values["table"], values["residuals"], neighbours, prior)


def k_smallest(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices (b, k) of the k smallest of each row of ``values`` (b, blocks × BLOCK), in no
    particular order: what ``np.argpartition`` gives, about three times faster for k << BLOCK.

    The k smallest block minima of a row are k of its values, so its k smallest values are at most
    the k-th smallest block minimum; only the few values within that bound are sorted.
    """
    b, width = values.shape
    blocks = values.reshape(b, width // BLOCK, BLOCK)
    minima = blocks.min(axis=2)
    if minima.shape[1] < k:
        return np.argpartition(values, k - 1, axis=1)[:, :k]
    bound = np.partition(minima, k - 1, axis=1)[:, k - 1]
    block_rows, block_ids = np.nonzero(minima <= bound[:, None])  # the few blocks that can hold them
    hits, within = np.nonzero(blocks[block_rows, block_ids] <= bound[block_rows, None])
    rows, cols = block_rows[hits], block_ids[hits] * BLOCK + within
    if np.bincount(rows, minlength=b).min(initial=k) < k:  # a NaN row: no bound holds
        return np.argpartition(values, k - 1, axis=1)[:, :k]
    order = np.lexsort((values[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    return cols[np.searchsorted(rows, np.arange(b))[:, None] + np.arange(k)]


def stored_reference(card: Any, params: Mapping[str, Any], path: Any) -> LatentReference | None:
    """The latent reference of a checkpoint whose σ comes from it (card.ensemble's ``sigma_from``
    is ``latent`` or ``latent+spread``), else None (σ from the members' spread, or no σ); its prior
    from ``latent_prior``."""
    if (card.ensemble or {}).get("sigma_from") not in ("latent", "latent+spread"):
        return None
    return LatentReference.from_params(params, int(card.ensemble["latent_neighbours"]), path,
                                       float(card.ensemble.get("latent_prior", 0.0)))
