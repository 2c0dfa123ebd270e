"""Structures that look like a model's training crystals under other ids: the same reduced formula
and volume per atom, in whatever cell they come."""

from __future__ import annotations

import pytest

from conftest import graph_of, perovskite, rocksalt
from crystalprop.data.fingerprints import VOLUME_TOLERANCE, like_packed, merge_fingerprints, pack_fingerprints


def _scaled(structure, volume_ratio):
    scaled = structure.copy()
    scaled.scale_lattice(structure.volume * volume_ratio)
    return scaled


def test_a_crystal_looks_like_itself_in_any_cell_and_like_nothing_else():
    nacl = rocksalt(5.64, "Na", "Cl")
    packed = pack_fingerprints([graph_of(nacl), graph_of(perovskite(3.905, "Sr", "Ti"))])
    longer = nacl.copy()
    longer.make_supercell([2, 1, 1])
    same = [longer, nacl.get_primitive_structure(),
            _scaled(nacl, 1 + VOLUME_TOLERANCE / 2), _scaled(nacl, 1 - VOLUME_TOLERANCE / 2)]
    other = [_scaled(nacl, 1 + 2 * VOLUME_TOLERANCE), _scaled(rocksalt(5.64, "K", "Cl"), 1.0),
             perovskite(3.905, "Ba", "Ti")]
    assert like_packed([graph_of(s) for s in same], packed) == [True] * 4
    assert like_packed([graph_of(s) for s in other], packed) == [False] * 3


def test_supercells_reduce_to_one_formula():
    nacl = rocksalt(5.64, "Na", "Cl")
    big = nacl.copy()
    big.make_supercell([2, 2, 1])
    assert len(big) == 4 * len(nacl)
    assert like_packed([graph_of(big)], pack_fingerprints([graph_of(nacl)])) == [True]


def test_merged_fingerprints_hold_each_set():
    a, b = rocksalt(5.64, "Na", "Cl"), rocksalt(6.29, "K", "Cl")
    merged = merge_fingerprints(pack_fingerprints([graph_of(a)]), pack_fingerprints([graph_of(b), graph_of(a)]))
    assert len(merged) == len(pack_fingerprints([graph_of(a), graph_of(b)]))
    assert like_packed([graph_of(a), graph_of(b), graph_of(rocksalt(5.0, "Li", "Cl"))], merged) == [True, True, False]


def test_an_empty_record_matches_nothing():
    assert like_packed([graph_of(rocksalt(5.64, "Na", "Cl"))], pack_fingerprints([])) == [False]
    with pytest.raises(ValueError, match="fingerprint"):
        like_packed([graph_of(rocksalt(5.64, "Na", "Cl"))], "not base64 of whole records!")


def test_unknown_or_vast_volumes_match_nothing():
    """A graph without its cell volume (0), or an atom alone in a box beyond float16's range, must not
    match every crystal of its formula (was: inf matched inf-times-tolerance, 0 matched 0)."""
    from dataclasses import replace

    from pymatgen.core import Lattice, Structure

    lone = Structure(Lattice.cubic(45.0), ["O"], [[0, 0, 0]])
    oxygen = Structure(Lattice.cubic(3.0), ["O"], [[0, 0, 0]])
    unknown = replace(graph_of(oxygen), volume=0.0)
    packed = pack_fingerprints([graph_of(oxygen), graph_of(lone), unknown])
    assert like_packed([graph_of(lone), unknown, graph_of(oxygen)], packed) == [False, False, True]


def test_an_ensemble_records_every_members_training_crystals_or_none():
    """Joined members: the union of their fingerprints; where one member has none, no record (a partial
    one would call that member's training crystals unseen)."""
    from types import SimpleNamespace

    from crystalprop.data.datasets import pack_ids
    from crystalprop.evaluation.joining import _merge_trained_ids

    a, b = rocksalt(5.64, "Na", "Cl"), rocksalt(6.29, "K", "Cl")

    def card(name, structure, prints=True):
        record = {"trained_ids": pack_ids([name])}
        if prints:
            record["trained_structures"] = pack_fingerprints([graph_of(structure)])
        return SimpleNamespace(training={"data": {"split_record": record}})

    first, second = card("a", a), card("b", b)
    _merge_trained_ids(first, [second])
    record = first.training["data"]["split_record"]
    assert like_packed([graph_of(a), graph_of(b)], record["trained_structures"]) == [True, True]
    first = card("a", a)
    _merge_trained_ids(first, [card("b", b, prints=False)])
    assert "trained_structures" not in first.training["data"]["split_record"]
