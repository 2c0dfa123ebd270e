"""Graphs from plain arrays: the Crystal type, one adapter per source, and a graph package
that needs no structure library."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from conftest import graph_of, perovskite, rocksalt, triclinic
from crystalprop.graph import GraphSettings, build_graph, sphere_kernel, spheres
from crystalprop.io.crystal import Crystal
from crystalprop.graph.cells import cell_for_graph
from crystalprop.graph.spheres import points_in_spheres
from crystalprop.io.adapters import crystal_from_atoms, crystal_from_structure
from crystals import hcp_mg, nacl_conventional, srtio3

ase = pytest.importorskip("ase")
REPO = Path(__file__).resolve().parents[1]


def as_atoms(structure: Structure) -> ase.Atoms:
    """The same crystal as an ase.Atoms, built from the fractional coordinates."""
    return ase.Atoms(numbers=structure.atomic_numbers, cell=structure.lattice.matrix,
                     scaled_positions=structure.frac_coords, pbc=True)


CRYSTALS = {"rocksalt": lambda: rocksalt(5.64), "perovskite": lambda: perovskite(3.905), "hcp": hcp_mg,
            "conventional": nacl_conventional, "triclinic": triclinic}


@pytest.mark.parametrize("name", list(CRYSTALS))
def test_pymatgen_and_ase_give_the_same_arrays_and_graph(name):
    structure = CRYSTALS[name]()
    from_pymatgen, from_ase = crystal_from_structure(structure), crystal_from_atoms(as_atoms(structure))
    assert np.array_equal(from_pymatgen.numbers, from_ase.numbers) and from_ase.numbers.dtype == np.int64
    assert np.array_equal(from_pymatgen.lattice, from_ase.lattice)
    np.testing.assert_allclose(from_ase.frac, from_pymatgen.frac, atol=1e-12)
    assert from_pymatgen.symbols == from_ase.symbols == tuple(site.specie.symbol for site in structure)
    for settings in (GraphSettings(), GraphSettings(cell="as-given")):
        a, b = (build_graph(cell_for_graph(c, settings.cell)[0], settings) for c in (from_pymatgen, from_ase))
        assert np.array_equal(a.atomic_numbers, b.atomic_numbers)
        assert np.array_equal(a.src, b.src) and np.array_equal(a.dst, b.dst)
        np.testing.assert_allclose(a.distances, b.distances, atol=2e-6)


def test_the_pymatgen_adapter_keeps_the_structure_as_it_is():
    structure = triclinic()
    structure.translate_sites([0], [1.5, -2.0, 0.25])  # outside the cell: kept unwrapped
    crystal = crystal_from_structure(structure)
    assert np.array_equal(crystal.frac, structure.frac_coords) and np.array_equal(crystal.lattice, structure.lattice.matrix)
    assert np.array_equal(crystal.numbers, structure.atomic_numbers) and len(crystal) == len(structure)
    assert np.allclose(crystal.cart, structure.cart_coords)
    assert crystal.volume == structure.volume and tuple(crystal.lengths) == structure.lattice.abc


@pytest.mark.parametrize(("atoms", "reason"), [
    (lambda: ase.Atoms("N2", positions=[[0, 0, 0], [0, 0, 1.1]], cell=[10, 10, 10], pbc=[True, True, False]),
     r"not periodic in all three directions \(pbc: T T F\)"),
    (lambda: ase.Atoms("N2", positions=[[0, 0, 0], [0, 0, 1.1]], pbc=True), "no 3D cell"),
    (lambda: ase.Atoms("XN", positions=[[0, 0, 0], [0, 0, 1.1]], cell=[5, 5, 5], pbc=True), "placeholder 'X'"),
])
def test_the_ase_adapter_refuses_what_is_not_a_crystal(atoms, reason):
    with pytest.raises(ValueError, match=reason):
        crystal_from_atoms(atoms())


def test_a_crystal_checks_its_shapes():
    with pytest.raises(ValueError, match="3x3 lattice"):
        Crystal([1, 2], np.eye(2), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2 atomic numbers, 1 positions"):
        Crystal([1, 2], np.eye(3), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="1 element symbols for 2 atoms"):
        Crystal([1, 2], np.eye(3), np.zeros((2, 3)), ("H",))


def test_unknown_elements_are_named_from_the_source():
    md = crystal_from_structure(Structure(Lattice.cubic(4.0), ["Md", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"Z = \[101\] in \['Md', 'O'\]"):
        build_graph(md)
    with pytest.raises(ValueError, match=r"Z = \[101\]$"):
        build_graph(Crystal(md.numbers, md.lattice, md.frac))


def test_a_graph_from_plain_arrays_imports_no_structure_library():
    """The graph package, the canonical cell included, runs on numpy, scipy and spglib alone."""
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from crystalprop.graph import GraphSettings, build_graph
        from crystalprop.io.crystal import Crystal
        from crystalprop.graph.cells import cell_for_graph
        from crystalprop.io.adapters import crystal_from_structure

        a = 5.64
        crystal = Crystal([11, 11, 11, 11, 17, 17, 17, 17], np.eye(3) * a,
                          [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]])
        cell, note = cell_for_graph(crystal)
        graph = build_graph(cell, GraphSettings())
        print(len(cell), graph.num_edges, note)
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('pymatgen', 'ase')))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"2 {graph_of(rocksalt(5.64)).num_edges} None", "[]"]


SEARCH_CASES = {"rocksalt": lambda: rocksalt(5.64), "perovskite": lambda: perovskite(3.905), "hcp": hcp_mg,
                "srtio3 2x1x3": lambda: srtio3() * (2, 1, 3), "triclinic": lambda: triclinic(6, seed=3)}


@pytest.mark.parametrize("name", list(SEARCH_CASES))
@pytest.mark.parametrize("radius", [0.5, 3.0, 8.0, 13.7])
@pytest.mark.parametrize("search", ["k-d tree", "default", "all pairs", "compiled"])
def test_the_search_finds_what_pymatgen_finds(name, radius, search, monkeypatch):
    """The same pairs and images as pymatgen's cell list, and distances equal to the last bit, by
    each of the numpy search's paths and by the compiled search."""
    from pymatgen.optimization.neighbors import find_points_in_spheres

    if search == "compiled":
        if sphere_kernel.library() is None:
            pytest.skip("no C++ compiler to build the compiled search")
    else:
        monkeypatch.setattr(sphere_kernel, "_state", {"library": None})
        dense_pairs = {"k-d tree": 0, "all pairs": 10**9}.get(search, spheres.DENSE_PAIRS)
        monkeypatch.setattr(spheres, "DENSE_PAIRS", dense_pairs)
    structure = SEARCH_CASES[name]()
    structure.translate_sites([0], [1.2, -0.7, 2.1])  # an atom outside the cell
    lattice, cart = structure.lattice.matrix, structure.cart_coords
    ours = points_in_spheres(lattice, cart, cart[1:], radius)
    theirs = find_points_in_spheres(cart, cart[1:].copy(), r=radius, pbc=np.ones(3, dtype=np.int64),
                                    lattice=lattice, tol=1e-8)

    def table(found):
        rows = np.column_stack([found[0], found[1], np.rint(found[2])]).astype(np.int64)
        order = np.lexsort(rows.T[::-1])
        return rows[order], found[3][order]

    (rows, distances), (their_rows, their_distances) = table(ours), table(theirs)
    assert np.array_equal(rows, their_rows)
    assert np.array_equal(distances, their_distances)
