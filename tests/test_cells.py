"""Tests for crystalprop.graph.cells: one canonical cell per crystal, and the fallbacks."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from conftest import SHARED_DATA, cell_graph_of
from crystals import hcp_mg, nacl_conventional, nacl_primitive, srtio3
from crystalprop.graph import cells
from crystalprop.graph.cells import cell_for_graph, may_have_pure_translation
from crystalprop.graph.neighbors import GraphSettings
from crystalprop.io.adapters import crystal_from_structure
from crystalprop.model.checkpoint import ModelCard
from crystalprop.data.datasets import Entry
from crystalprop.data.graph_cache import build_graphs, cache_key

MP_STRUCTURES = SHARED_DATA / "mp2018" / "structures"


def lisio_triclinic() -> Structure:
    lattice = Lattice.from_parameters(4.7, 5.3, 6.1, 79.0, 86.0, 104.0)
    return Structure(lattice, ["Li", "O", "Si", "O"], [[0, 0, 0], [0.3, 0.1, 0.2], [0.55, 0.45, 0.6], [0.8, 0.7, 0.1]])


def rotated_translated(structure: Structure, seed: int) -> Structure:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(r))
    return Structure(Lattice(structure.lattice.matrix @ rotation.T), structure.species,
                     structure.cart_coords @ rotation.T + rng.uniform(-3, 3, 3), coords_are_cartesian=True)


def other_basis(structure: Structure) -> Structure:
    """The same cell described by a skewed basis (a, b + a, c - 2b)."""
    return Structure.from_sites(structure.copy().make_supercell([[1, 0, 0], [1, 1, 0], [0, -2, 1]]).sites)


def graph_signature(structure: Structure) -> tuple:
    """What the model sees, independent of atom order: elements and sorted edge lengths."""
    graph = cell_graph_of(structure)
    return tuple(np.sort(graph.atomic_numbers)), np.sort(graph.distances)


BUILT = {"NaCl": nacl_primitive, "SrTiO3": srtio3, "Mg-hcp": hcp_mg, "triclinic": lisio_triclinic}
VARIANTS = {
    "conventional": lambda s: SpacegroupAnalyzer(s).get_conventional_standard_structure(),
    "2x2x2": lambda s: s * (2, 2, 2),
    "2x1x1": lambda s: s * (2, 1, 1),
    "rotated+translated": lambda s: rotated_translated(s, 3),
    "other basis": other_basis,
    "all at once": lambda s: rotated_translated(other_basis(s * (1, 2, 1)), 5),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(BUILT))
def test_every_cell_of_a_crystal_gives_the_same_graph(name, variant):
    structure = BUILT[name]()
    changed = VARIANTS[variant](structure)
    (z0, d0), (z1, d1) = graph_signature(structure), graph_signature(changed)
    assert z0 == z1
    np.testing.assert_allclose(d1, d0, atol=1e-5)


def test_canonical_cell_is_primitive_and_niggli_reduced():
    cell, note = cell_for_graph(crystal_from_structure(nacl_conventional() * (1, 2, 1)))
    assert note is None and len(cell) == 2
    a, b, c = cell.lengths
    assert a == pytest.approx(5.64 / 2**0.5) and b == pytest.approx(a) and c == pytest.approx(a)


def test_as_given_keeps_the_cell():
    crystal = crystal_from_structure(nacl_conventional())
    cell, note = cell_for_graph(crystal, "as-given")
    assert cell is crystal and note is None


def test_unknown_cell_setting_is_refused():
    with pytest.raises(ValueError, match="unknown cell setting 'primitive'"):
        cell_for_graph(crystal_from_structure(nacl_primitive()), "primitive")
    with pytest.raises(ValueError, match="canonical or as-given"):
        GraphSettings(cell="primitive")


def test_a_failed_symmetry_search_falls_back_to_the_given_cell(monkeypatch):
    import spglib

    monkeypatch.setattr(spglib, "standardize_cell", lambda *a, **k: None)
    crystal = crystal_from_structure(nacl_conventional())
    cell, note = cell_for_graph(crystal)
    assert cell is crystal
    assert note.startswith("canonical cell search failed (spglib found no symmetry") and "as given" in note


def test_a_symmetry_search_that_runs_long_falls_back_with_a_note(monkeypatch):
    def slow(crystal, symprec=cells.SYMPREC):
        time.sleep(5)
        return crystal

    monkeypatch.setattr(cells, "canonical_cell", slow)
    crystal = crystal_from_structure(nacl_conventional())
    start = time.monotonic()
    cell, note = cell_for_graph(crystal, timeout=0.2)
    assert time.monotonic() - start < 2
    assert cell is crystal and note == "canonical cell search took longer than 0.2 s; used the cell as given"


def test_predict_reports_the_fallback_in_the_warning_column(monkeypatch):
    import spglib

    from crystalprop.prediction.predictor import iter_prepared

    monkeypatch.setattr(spglib, "standardize_cell", lambda *a, **k: None)
    (item,) = iter_prepared([nacl_conventional()], GraphSettings(), workers=0)
    assert item.graph is not None and item.cell_sites == 8
    assert any(w.startswith("canonical cell search failed") for w in item.warnings), item.warnings


def test_precheck_finds_every_supercell_and_spares_primitive_cells():
    for make in BUILT.values():
        structure = make()
        assert not may_have_pure_translation(crystal_from_structure(structure), 0.02)
        assert may_have_pure_translation(crystal_from_structure(structure * (1, 1, 2)), 0.02)
        noisy = structure * (2, 1, 1)
        noisy.perturb(0.004)  # within spglib's tolerance: still a supercell to spglib
        assert may_have_pure_translation(crystal_from_structure(noisy), 0.02)
    assert may_have_pure_translation(crystal_from_structure(nacl_conventional()), 0.02)


@pytest.mark.parametrize("make", [nacl_primitive, lisio_triclinic, hcp_mg])
def test_precheck_settles_large_cells_without_spglib(make, monkeypatch):
    """With hundreds of candidate shifts (5 x 5 x 6 cells, 150+ atoms of each element): a supercell is
    still found, within spglib's tolerance too, and a thermally disordered one (0.05 Å) is called
    primitive, so spglib's search (28 s for 4,096 perturbed Si atoms) is not run for it."""
    import spglib

    base = make()
    supercell = base * (5, 5, 6)
    assert min(supercell.composition.values()) > 100
    assert may_have_pure_translation(crystal_from_structure(supercell), 0.02)
    within = supercell.copy()
    within.perturb(0.004)
    assert may_have_pure_translation(crystal_from_structure(within), 0.02)
    disordered = supercell.copy()
    disordered.perturb(0.05)
    crystal = crystal_from_structure(disordered)
    assert not may_have_pure_translation(crystal, 0.02)

    def refuse(*args, **kwargs):
        raise AssertionError("spglib was asked")

    monkeypatch.setattr(spglib, "standardize_cell", refuse)
    cell, note = cell_for_graph(crystal)
    assert note is None and len(cell) == len(crystal)


@pytest.mark.shared
def test_precheck_agrees_with_spglib_on_real_files():
    """Every file the pre-check calls primitive, spglib calls primitive too (the pre-check only saves time)."""
    import spglib

    paths = sorted(MP_STRUCTURES.glob("*.cif"))[:150]
    if not paths:
        pytest.skip("../shared/data/mp2018 not available")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_file(p) for p in paths]
    for structure in structures + [s * (1, 2, 1) for s in structures[:30]]:
        numbers = [site.specie.Z for site in structure]
        found = spglib.standardize_cell((structure.lattice.matrix, structure.frac_coords, numbers),
                                        to_primitive=True, no_idealize=True, symprec=cells.SYMPREC)
        if len(found[2]) < len(structure):
            assert may_have_pure_translation(crystal_from_structure(structure), cells.PRECHECK_FACTOR * cells.SYMPREC)


def test_graph_cache_key_includes_the_cell_setting():
    entries = [Entry("x", 1.0, nacl_conventional().as_dict(), "train")]
    canonical, as_given = GraphSettings(), GraphSettings(cell="as-given")
    assert cache_key(entries, canonical) != cache_key(entries, as_given)


def test_training_graphs_use_the_cell_setting():
    entries = [Entry("x", 1.0, nacl_conventional().as_dict(), "train")]
    (canonical,), _ = build_graphs(entries, GraphSettings(), workers=1, use_cache=False)
    (as_given,), _ = build_graphs(entries, GraphSettings(cell="as-given"), workers=1, use_cache=False)
    assert (canonical.num_nodes, as_given.num_nodes) == (2, 8)


def test_model_card_stores_the_cell_setting():
    card = ModelCard(target="t", graph=GraphSettings(cell="as-given"))
    raw = json.loads(card.to_json())
    assert raw["graph"]["cell"] == "as-given"
    assert ModelCard.from_json(card.to_json()).graph.cell == "as-given"


def test_cards_without_a_cell_setting_use_the_canonical_cell():
    """Format-1 checkpoints (the first shipped models) predate the setting."""
    raw = json.loads(ModelCard(target="t").to_json())
    del raw["graph"]["cell"]
    raw["format"] = 1
    assert ModelCard.from_json(json.dumps(raw)).graph.cell == "canonical"


def _skewed_cscl(k: float) -> Structure:
    """CsCl whose third basis vector is k·a + k·b + c: the same crystal in a badly skewed basis."""
    a = 2.8
    return Structure(Lattice([[a, 0, 0], [0, a, 0], [k * a, k * a, a]]), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_a_cell_too_skewed_for_spglib_s_reduction_still_gets_its_canonical_cell():
    """Was (hunt18 1): spglib's Niggli reduction fails for such a basis from k = 1000 on; the graph was then built on
    the skewed cell, another answer (-0.29 against -0.32 eV/atom), and from k = 1e5 its neighbour search ran for
    hours, deaf to --timeout and signals. The basis is LLL-reduced first where spglib fails."""
    plain, _ = cell_for_graph(crystal_from_structure(_skewed_cscl(0)))
    for k in (1000, 100_000):
        started = time.perf_counter()
        crystal, note = cell_for_graph(crystal_from_structure(_skewed_cscl(k)))
        assert note is None and time.perf_counter() - started < 5
        np.testing.assert_allclose(np.sort(np.linalg.norm(crystal.lattice, axis=1)),
                                   np.sort(np.linalg.norm(plain.lattice, axis=1)), rtol=1e-6)
        graph = cell_graph_of(_skewed_cscl(k))
        assert graph.num_nodes == 2


def test_the_neighbour_search_refuses_an_extremely_skewed_basis_at_once():
    """As given (`--cell as-given`), a basis skewed far beyond any real cell's is refused with the way on, in
    moments, where the search ran for hours (hunt18 1)."""
    from conftest import graph_of  # noqa: PLC0415
    from crystalprop.graph.neighbors import NeighborSearchError  # noqa: PLC0415

    started = time.perf_counter()
    with pytest.raises(NeighborSearchError, match="skewed.*--cell canonical"):
        graph_of(_skewed_cscl(100_000))
    assert time.perf_counter() - started < 5
    assert graph_of(_skewed_cscl(20)).num_nodes == 2  # a skewed basis within reason is searched as given
