"""A periodic crystal as plain arrays: what the graph builder takes, from whatever source.

The graph package depends on no structure library; adapters in :mod:`crystalprop.io.adapters`
turn a pymatgen ``Structure`` or an ``ase.Atoms`` into a :class:`Crystal`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Crystal:
    """An ordered crystal periodic in three dimensions.

    numbers: (N,) int64 atomic numbers. lattice: (3, 3) float64, rows the cell vectors a, b, c
    in Å. frac: (N, 3) float64 fractional coordinates, as given (not wrapped). symbols: the
    element names of the source, optional, only to name unknown elements in errors.
    """

    numbers: np.ndarray
    lattice: np.ndarray
    frac: np.ndarray
    symbols: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        lattice = np.asarray(self.lattice, dtype=np.float64)
        frac = np.asarray(self.frac, dtype=np.float64).reshape(-1, 3)
        if lattice.shape != (3, 3) or len(frac) != len(numbers):
            raise ValueError(f"a crystal needs a 3x3 lattice and one fractional position per atom: lattice "
                             f"{lattice.shape}, {len(numbers)} atomic numbers, {len(frac)} positions")
        if self.symbols is not None and len(self.symbols) != len(numbers):
            raise ValueError(f"{len(self.symbols)} element symbols for {len(numbers)} atoms")
        object.__setattr__(self, "numbers", numbers)
        object.__setattr__(self, "lattice", lattice)
        object.__setattr__(self, "frac", frac)

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def cart(self) -> np.ndarray:
        """(N, 3) Cartesian positions in Å."""
        return self.frac @ self.lattice

    @property
    def volume(self) -> float:
        """Cell volume in Å³, |(a x b) . c| (the cross product written out: ``np.cross`` costs 20 µs)."""
        (a0, a1, a2), (b0, b1, b2) = self.lattice[:2].tolist()
        return float(abs(np.dot(np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0]), self.lattice[2])))

    @property
    def lengths(self) -> np.ndarray:
        """|a|, |b|, |c| in Å."""
        return np.sqrt(np.sum(self.lattice**2, axis=1))
