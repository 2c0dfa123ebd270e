"""The network's architecture settings, free of heavy imports so the CLI can show their defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass

LAYER_NORM_EPS = 1e-5  # PyTorch's default, as in the original (both LayerNorms of each layer)
BATCH_NORM_EPS = 1e-5  # each layer's BatchNorm1d


def radial_basis(vmax: float, bins: int, vmin: float = 0.0):
    """(centres μ_k (bins,) float32, γ) of the Gaussian radial basis exp(-γ (d - μ_k)²): μ evenly
    spaced in [vmin, vmax], γ the inverse spacing (not its square), as in the original. Shared by
    both inference engines."""
    import numpy as np  # noqa: PLC0415

    centres = np.linspace(vmin, vmax, bins, dtype=np.float32)
    return centres, float(1.0 / np.diff(centres).mean())


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters; stored in full in every checkpoint.

    The defaults are those of ``crystalprop train`` and of the shipped models. Checkpoint cards
    store every field, so these defaults never change how a checkpoint is read (``site_features``,
    newer than the rest, is False where a card lacks it, as it was then).
    """

    layers: int = 5
    features: int = 64
    heads: int = 1
    rbf_bins: int = 128
    rbf_max: float = 8.0
    fc_features: int = 128
    site_features: bool = False
    """Atoms also carry their neighbour shell's descriptors (``GraphSettings.site_features``): the atom
    embedding reads 92 + 13 inputs. Absent from cards older than the setting, which are read as False."""

    @property
    def atom_inputs(self) -> int:
        """Width of each atom's input row: the element's features, then its site descriptors if any."""
        from crystalprop.graph.elements import N_FEATURES  # noqa: PLC0415
        from crystalprop.graph.site_features import N_SITE  # noqa: PLC0415

        return N_FEATURES + (N_SITE if self.site_features else 0)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter of a :class:`crystalprop.model.matformer.Matformer` of
        this configuration, in its order (Dense weights are (out, in)), known without MindSpore."""
        c, hc, f = self.features, self.heads * self.features, self.fc_features

        def dense(name: str, fan_in: int, out: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
            return {f"{name}.weight": (out, fan_in), **({f"{name}.bias": (out,)} if bias else {})}

        shapes = {**dense("atom_embedding", self.atom_inputs, c), **dense("edge_in", self.rbf_bins, c),
                  **dense("edge_out", c, c)}
        for i in range(self.layers):
            p = f"att_layers.{i}"
            shapes.update({**dense(f"{p}.lin_query", c, hc), **dense(f"{p}.lin_key", c, hc),
                           **dense(f"{p}.lin_value", c, hc), **dense(f"{p}.lin_edge", c, hc, bias=False),
                           **dense(f"{p}.lin_msg_update", 3 * c, 3 * c), **dense(f"{p}.msg_layer", 3 * c, c),
                           f"{p}.msg_norm.gamma": (c,), f"{p}.msg_norm.beta": (c,),
                           f"{p}.layer_norm.gamma": (3 * c,), f"{p}.layer_norm.beta": (3 * c,),
                           **dense(f"{p}.lin_concate", hc, c),
                           **{f"{p}.bn.{name}": (c,) for name in ("moving_mean", "moving_variance", "gamma", "beta")},
                           **dense(f"{p}.lin_skip", c, c)})
        return {**shapes, **dense("fc", c, f), **dense("fc_out", f, 1)}

    def radial_basis(self):
        """This configuration's :func:`radial_basis` (from 0 to ``rbf_max`` in ``rbf_bins``)."""
        return radial_basis(self.rbf_max, self.rbf_bins)

    def as_dict(self) -> dict:
        """Plain dict for JSON metadata; ``site_features`` only where set, so that versions before the
        setting read every other model's card and resume every other run."""
        fields = asdict(self)
        if not self.site_features:
            del fields["site_features"]
        return fields
