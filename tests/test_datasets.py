"""Tests for crystalprop.data.datasets: every supported layout, splits, bad records."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os

import numpy as np
import pytest
from pymatgen.io.cif import CifWriter

from conftest import make_structures, synthetic_target
from crystalprop.data.datasets import DatasetError, load_dataset
from crystalprop.data.graph_cache import build_graphs, entry_structure
from crystalprop.graph import GraphSettings

N = 12


@pytest.fixture(scope="module")
def crystals():
    return make_structures(N)


def _targets(crystals):
    return {name: synthetic_target(s) for name, s in crystals}


def _same_structure(a, b) -> bool:
    return (a.composition.reduced_formula == b.composition.reduced_formula and len(a) == len(b)
            and math.isclose(a.volume, b.volume, rel_tol=1e-4))


def _check_dataset(dataset, crystals, target="y"):
    """Every crystal present once, in order, with its target, and its source rebuilds the structure."""
    assert dataset.target == target
    assert [e.id for e in dataset.entries] == [name for name, _ in crystals]
    expected = _targets(crystals)
    for entry, (name, structure) in zip(dataset.entries, crystals):
        assert entry.target == pytest.approx(expected[name], rel=1e-9)
        assert _same_structure(entry_structure(entry.source, entry.id), structure), entry.id
    assert dataset.skipped == []


# --- JSON layouts -------------------------------------------------------------------


def test_json_list_of_pymatgen_dicts(tmp_path, crystals):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"id": n, "structure": s.as_dict(), "y": synthetic_target(s)} for n, s in crystals]))
    dataset = load_dataset(path, "y")
    _check_dataset(dataset, crystals)
    graphs, errors = build_graphs(dataset.entries, workers=1)
    assert all(g is not None for g in graphs) and not any(errors)


def test_json_with_jarvis_atoms_dicts(tmp_path, crystals):
    records = []
    for name, s in crystals:
        atoms = {"lattice_mat": s.lattice.matrix.tolist(), "coords": s.frac_coords.tolist(),
                 "elements": [site.specie.symbol for site in s], "cartesian": False}
        records.append({"jid": name, "atoms": atoms, "formation_energy": synthetic_target(s)})
    path = tmp_path / "jarvis.json"
    path.write_text(json.dumps(records))
    dataset = load_dataset(path)  # the only numeric field is chosen
    _check_dataset(dataset, crystals, target="formation_energy")


def test_json_with_cif_text(tmp_path, crystals):
    records = [{"material_id": n, "cif": str(CifWriter(s)), "y": synthetic_target(s)} for n, s in crystals]
    path = tmp_path / "cifs.json"
    path.write_text(json.dumps(records))
    _check_dataset(load_dataset(path, "y"), crystals)


def test_json_lines(tmp_path, crystals):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"id": n, "structure": s.as_dict(), "y": synthetic_target(s)})
                              for n, s in crystals) + "\n")
    _check_dataset(load_dataset(path, "y"), crystals)


def test_gzip_json(tmp_path, crystals):
    path = tmp_path / "data.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump([{"id": n, "structure": s.as_dict(), "y": synthetic_target(s)} for n, s in crystals], handle)
    _check_dataset(load_dataset(path, "y"), crystals)


def test_json_dict_with_records_key(tmp_path, crystals):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"records": [{"id": n, "structure": s.as_dict(), "y": synthetic_target(s)}
                                            for n, s in crystals]}))
    _check_dataset(load_dataset(path, "y"), crystals)


def test_json_dict_with_an_empty_records_list_beside_the_data(tmp_path, crystals):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"records": [], "data": [{"id": n, "structure": s.as_dict(), "y": synthetic_target(s)}
                                                        for n, s in crystals]}))
    _check_dataset(load_dataset(path, "y"), crystals)


# --- folders and CSV ------------------------------------------------------------------


def test_cgcnn_folder_id_prop_without_header(tmp_path, crystals):
    folder = tmp_path / "cgcnn"
    folder.mkdir()
    with open(folder / "id_prop.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        for name, s in crystals:
            writer.writerow([name, repr(synthetic_target(s))])
            CifWriter(s).write_file(folder / f"{name}.cif")
    (folder / "atom_init.json").write_text("{}")  # CGCNN folders carry this; it must not confuse the reader
    dataset = load_dataset(folder)
    assert dataset.origin == str(folder)
    _check_dataset(dataset, crystals, target="target")
    assert all(e.source == str(folder / f"{e.id}.cif") for e in dataset.entries)


@pytest.mark.parametrize("first_value", ["nan", "", "?"])
def test_a_headerless_table_whose_first_label_is_missing_keeps_that_record(tmp_path, crystals, first_value):
    """Was: a first row with a missing or NaN label was taken for a header: the record vanished from the data
    and from skipped.log, and the target was named after the missing value."""
    folder = tmp_path / "cgcnn"
    folder.mkdir()
    with open(folder / "id_prop.csv", "w", newline="") as handle:
        for k, (name, s) in enumerate(crystals):
            handle.write(f"{name},{first_value if k == 0 else repr(synthetic_target(s))}\n")
            CifWriter(s).write_file(folder / f"{name}.cif")
    for target in (None, ""):  # `train` gives "" where --target is left out (hunt16 5: the target named '')
        dataset = load_dataset(folder, target)
        assert dataset.target == "target" and len(dataset.entries) == len(crystals) - 1
        assert [rid for rid, _ in dataset.skipped] == [crystals[0][0]]


@pytest.mark.parametrize("header", ["id,y,", "id,y,2d_gap", "id,(eV),y"])
def test_a_header_with_a_blank_or_unusual_name_is_still_a_header(tmp_path, crystals, header):
    """A spreadsheet's trailing comma, or a name led by a digit or a symbol, must not turn the header into
    a record (and the columns after the id into an unnamed target)."""
    folder = tmp_path / "table"
    folder.mkdir()
    columns = header.split(",")
    lines = [header]
    for name, s in crystals[:4]:
        CifWriter(s).write_file(folder / f"{name}.cif")
        values = {"id": name, "y": repr(synthetic_target(s))}
        lines.append(",".join(values.get(c, "1") for c in columns))
    (folder / "properties.csv").write_text("\n".join(lines) + "\n")
    dataset = load_dataset(folder, "y")
    assert [e.id for e in dataset.entries] == [n for n, _ in crystals[:4]] and dataset.skipped == []
    assert [e.target for e in dataset.entries] == [pytest.approx(synthetic_target(s)) for _, s in crystals[:4]]


def test_an_id_with_two_structure_files_is_skipped_naming_both(tmp_path, crystals):
    """Was: one of them taken, whichever the folder listed first (or the top-level file over structures/)."""
    folder = tmp_path / "cgcnn"
    (folder / "structures").mkdir(parents=True)
    with open(folder / "id_prop.csv", "w") as handle:
        for name, s in crystals[:3]:
            handle.write(f"{name},{synthetic_target(s)!r}\n")
            CifWriter(s).write_file(folder / "structures" / f"{name}.cif")
    crystals[3][1].to(filename=str(folder / "structures" / f"{crystals[0][0]}.vasp"), fmt="poscar")
    CifWriter(crystals[4][1]).write_file(folder / f"{crystals[1][0]}.cif")
    dataset = load_dataset(folder)
    assert [e.id for e in dataset.entries] == [crystals[2][0]]
    reasons = dict(dataset.skipped)
    assert f"{crystals[0][0]}.cif" in reasons[crystals[0][0]] and f"{crystals[0][0]}.vasp" in reasons[crystals[0][0]]
    assert "structures" in reasons[crystals[1][0]]


def test_cgcnn_folder_with_named_target(tmp_path, crystals):
    folder = tmp_path / "cgcnn"
    (folder / "structures").mkdir(parents=True)
    with open(folder / "id_prop.csv", "w", newline="") as handle:
        for name, s in crystals:
            handle.write(f"{name},{synthetic_target(s)!r}\n")
            CifWriter(s).write_file(folder / "structures" / f"{name}.cif")
    _check_dataset(load_dataset(folder, "band_gap"), crystals, target="band_gap")


def test_folder_with_header_csv_id_column_and_poscar_files(tmp_path, crystals):
    folder = tmp_path / "vasp"
    folder.mkdir()
    rows = []
    for i, (name, s) in enumerate(crystals):
        suffix = ".vasp" if i % 2 == 0 else ".poscar"
        s.to(filename=str(folder / f"{name}{suffix}"), fmt="poscar")
        rows.append({"note": "x", "material": name, "energy": synthetic_target(s), "gap": 0.5 * i})
    with open(folder / "table.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["note", "material", "energy", "gap"])
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DatasetError, match="energy.*gap|gap.*energy"):
        load_dataset(folder, id_column="material")  # two numeric fields: must ask which
    dataset = load_dataset(folder, "energy", id_column="material")
    _check_dataset(dataset, crystals, target="energy")
    assert {e.source.rsplit(".", 1)[1] for e in dataset.entries} == {"vasp", "poscar"}
    gap = load_dataset(folder, "gap", id_column="material")
    assert [e.target for e in gap.entries] == [0.5 * i for i in range(N)]


def test_folder_poscar_prefixed_file_names(tmp_path, crystals):
    folder = tmp_path / "poscars"
    folder.mkdir()
    with open(folder / "properties.csv", "w") as handle:
        handle.write("id,y\n")
        for name, s in crystals[:3]:
            s.to(filename=str(folder / f"POSCAR_{name}"), fmt="poscar")
            handle.write(f"POSCAR_{name},{synthetic_target(s)!r}\n")
    dataset = load_dataset(folder)
    assert [e.id for e in dataset.entries] == [f"POSCAR_{n}" for n, _ in crystals[:3]]
    for entry, (_, s) in zip(dataset.entries, crystals):
        assert _same_structure(entry_structure(entry.source, entry.id), s)


def test_csv_with_structure_column(tmp_path, crystals):
    path = tmp_path / "table.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "structure", "y"])
        for name, s in crystals:
            writer.writerow([name, str(CifWriter(s)), repr(synthetic_target(s))])
    _check_dataset(load_dataset(path), crystals)

    other = tmp_path / "poscar_text.csv"
    with open(other, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["mpid", "poscar", "y", "split"])
        for i, (name, s) in enumerate(crystals):
            writer.writerow([name, s.to(fmt="poscar"), repr(synthetic_target(s)), "val" if i < 3 else "train"])
    dataset = load_dataset(other, structure_column="poscar")
    _check_dataset(dataset, crystals)
    assert dataset.split_source == "split column"
    assert [e.id for e in dataset.split("val")] == [n for n, _ in crystals[:3]]

    with pytest.raises(DatasetError, match="nope"):
        load_dataset(path, structure_column="nope")


# --- splits ------------------------------------------------------------------------------


def _write_json(path, crystals, **extra):
    path.write_text(json.dumps([{"id": n, "structure": s.as_dict(), "y": synthetic_target(s), **extra}
                                for n, s in crystals]))
    return path


def test_split_json_beside_the_data(tmp_path, crystals):
    path = _write_json(tmp_path / "data.json", crystals)
    names = [n for n, _ in crystals]
    (tmp_path / "split.json").write_text(json.dumps({"train": names[:6], "val": names[6:9], "test": names[9:]}))
    dataset = load_dataset(path, "y", val_fraction=0.5, seed=3)  # the file wins over fractions
    assert dataset.split_source == str(tmp_path / "split.json")
    assert [e.id for e in dataset.split("train")] == names[:6]
    assert [e.id for e in dataset.split("val")] == names[6:9]
    assert [e.id for e in dataset.split("test")] == names[9:]


def test_split_json_unlisted_ids_go_to_train(tmp_path, crystals):
    path = _write_json(tmp_path / "data.json", crystals)
    names = [n for n, _ in crystals]
    (tmp_path / "split.json").write_text(json.dumps({"val": names[:2]}))
    dataset = load_dataset(path, "y")
    assert [e.id for e in dataset.split("val")] == names[:2]
    assert len(dataset.split("train")) == N - 2


def test_random_split_is_seeded_and_recorded(tmp_path):
    crystals = make_structures(40)
    path = _write_json(tmp_path / "data.json", crystals)
    a = load_dataset(path, "y", val_fraction=0.1, test_fraction=0.2, seed=7)
    b = load_dataset(path, "y", val_fraction=0.1, test_fraction=0.2, seed=7)
    c = load_dataset(path, "y", val_fraction=0.1, test_fraction=0.2, seed=8)
    assert "seed 7" in a.split_source and "random" in a.split_source
    assert "seed 8" in c.split_source
    assert [e.split for e in a.entries] == [e.split for e in b.entries]
    assert [e.split for e in a.entries] != [e.split for e in c.entries]
    assert (len(a.split("train")), len(a.split("val")), len(a.split("test"))) == (28, 4, 8)
    assert all(e.split in ("train", "val", "test") for e in a.entries)


# --- bad records ------------------------------------------------------------------------------


def test_bad_json_records_are_skipped_with_reasons(tmp_path, crystals):
    good = [{"id": n, "structure": s.as_dict(), "y": synthetic_target(s)} for n, s in crystals[:6]]
    s = crystals[0][1].as_dict()
    bad = [
        {"id": "no-target", "structure": s},
        {"id": "text-target", "structure": s, "y": "abc"},
        {"id": "nan-target", "structure": s, "y": float("nan")},
        {"id": "inf-target", "structure": s, "y": float("inf")},
        {"id": "null-target", "structure": s, "y": None},
        {"id": "bool-target", "structure": s, "y": True},
        {"id": "no-structure", "y": 1.0},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(good[:3] + bad + good[3:]))  # NaN / Infinity literals, as Python writes them
    dataset = load_dataset(path, "y")
    assert [e.id for e in dataset.entries] == [r["id"] for r in good]
    reasons = dict(dataset.skipped)
    assert list(reasons) == [r["id"] for r in bad]
    assert len(dataset.skipped) == 7
    assert "'y'" in reasons["no-target"]
    assert "abc" in reasons["text-target"]
    assert "nan" in reasons["nan-target"].lower() and "inf" in reasons["inf-target"].lower()
    assert "structure" in reasons["no-structure"]
    assert all("\n" not in r for r in reasons.values())


def test_missing_structure_file_in_folder_is_skipped(tmp_path, crystals):
    folder = tmp_path / "cgcnn"
    folder.mkdir()
    with open(folder / "id_prop.csv", "w") as handle:
        for name, s in crystals[:4]:
            CifWriter(s).write_file(folder / f"{name}.cif")
            handle.write(f"{name},{synthetic_target(s)}\n")
        handle.write("ghost,1.0\n")
        handle.write("bad-value,not-a-number\n")
        handle.write("nan-value,nan\n")
    (folder / "bad-value.cif").write_text(str(CifWriter(crystals[0][1])))
    (folder / "nan-value.cif").write_text(str(CifWriter(crystals[0][1])))
    dataset = load_dataset(folder)
    assert [e.id for e in dataset.entries] == [n for n, _ in crystals[:4]]
    reasons = dict(dataset.skipped)
    assert set(reasons) == {"ghost", "bad-value", "nan-value"}
    assert "ghost" in reasons["ghost"] and str(folder) in reasons["ghost"]
    assert all(suffix in reasons["ghost"] for suffix in (".cif", ".vasp", ".poscar", ".json"))
    assert "structures/" in reasons["ghost"]


def test_unreadable_structure_is_counted_at_graph_time(tmp_path, crystals):
    records = [{"id": n, "structure": s.as_dict(), "y": 1.0} for n, s in crystals[:3]]
    records.insert(1, {"id": "garbage", "structure": "this is not a crystal\nat all\n", "y": 2.0})
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    dataset = load_dataset(path, "y")
    graphs, errors = build_graphs(dataset.entries, workers=1)
    assert [g is None for g in graphs] == [False, True, False, False]
    assert errors[1] and not errors[0]


def test_duplicated_ids_are_refused_by_name(tmp_path, crystals):
    records = [{"id": n, "structure": s.as_dict(), "y": 1.0} for n, s in crystals[:5]]
    records += [dict(records[1]), dict(records[3]), dict(records[3])]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DatasetError) as info:
        load_dataset(path, "y")
    message = str(info.value)
    assert crystals[1][0] in message and crystals[3][0] in message
    assert crystals[0][0] not in message
    assert str(path) in message


def test_target_auto_choice_and_listing(tmp_path, crystals):
    single = _write_json(tmp_path / "single.json", crystals[:3])
    assert load_dataset(single).target == "y"
    several = tmp_path / "several.json"
    several.write_text(json.dumps([{"id": n, "structure": s.as_dict(), "band_gap": 1.0, "e_form": -1.0,
                                    "formula": s.composition.reduced_formula} for n, s in crystals[:3]]))
    with pytest.raises(DatasetError) as info:
        load_dataset(several)
    message = str(info.value)
    assert "--target" in message and "band_gap" in message and "e_form" in message
    assert "formula" not in message and "id" not in message.split("numeric fields")[1]
    assert [e.target for e in load_dataset(several, "e_form").entries] == [-1.0] * 3
    blank_first = tmp_path / "blank_first.json"  # was: the target chosen from the first record alone (nsites)
    blank_first.write_text(json.dumps([{"id": n, "structure": s.as_dict(), "band_gap": None if k == 0 else 1.0,
                                        "nsites": len(s)} for k, (n, s) in enumerate(crystals[:3])]))
    with pytest.raises(DatasetError, match="--target") as both:
        load_dataset(blank_first)
    assert "band_gap" in str(both.value) and "nsites" in str(both.value)
    none = tmp_path / "none.json"
    none.write_text(json.dumps([{"id": "a", "structure": crystals[0][1].as_dict(), "label": "x"}]))
    with pytest.raises(DatasetError, match="none"):
        load_dataset(none)


def test_a_target_no_record_has_is_named_with_the_columns_there(tmp_path, crystals):
    """E.g. the band-gap model evaluated on elastic data: one line naming what is there, not
    'no usable records (N skipped)'."""
    several = tmp_path / "several.json"
    several.write_text(json.dumps([{"id": n, "structure": s.as_dict(), "K_VRH": 1.0, "G_VRH": 2.0}
                                   for n, s in crystals[:3]]))
    with pytest.raises(DatasetError, match=r"no field 'band_gap'.*K_VRH, G_VRH"):
        load_dataset(several, "band_gap")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "properties.csv").write_text("material_id,K_VRH,G_VRH\n" + "".join(f"{n},1,2\n" for n, _ in crystals[:3]))
    for name, structure in crystals[:3]:
        CifWriter(structure).write_file(folder / f"{name}.cif")
    with pytest.raises(DatasetError, match=r"no column 'band_gap'.*material_id, K_VRH, G_VRH"):
        load_dataset(folder, "band_gap")


def test_no_usable_records_and_missing_path(tmp_path, crystals):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"id": n, "structure": s.as_dict(), "y": "?"} for n, s in crystals[:3]]))
    with pytest.raises(DatasetError, match="no usable records.*3 skipped"):
        load_dataset(path, "y")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "absent.json", "y")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(DatasetError):
        load_dataset(empty, "y")


def test_graph_cache_reuses_and_invalidates(tmp_path, crystals, monkeypatch):
    folder = tmp_path / "cgcnn"
    folder.mkdir()
    with open(folder / "id_prop.csv", "w") as handle:
        for name, s in crystals[:4]:
            CifWriter(s).write_file(folder / f"{name}.cif")
            handle.write(f"{name},{synthetic_target(s)}\n")
    dataset = load_dataset(folder)
    first, _ = build_graphs(dataset.entries, workers=1)
    from crystalprop.data import graph_cache

    calls = []
    monkeypatch.setattr(graph_cache, "_build_one", lambda job: calls.append(job) or (None, "rebuilt", False))
    again, _ = build_graphs(dataset.entries, workers=1)
    assert calls == []  # served from the cache
    for g1, g2 in zip(first, again):
        np.testing.assert_array_equal(g1.src, g2.src)
        np.testing.assert_array_equal(g1.distances, g2.distances)
        assert g1.volume == g2.volume > 0  # the fingerprints' volume per atom survives the cache
    # a re-copied data set (new modification times, same bytes) keeps its graphs
    for path in folder.glob("*.cif"):
        os.utime(path, ns=(2, 2))
    build_graphs(load_dataset(folder).entries, workers=1)
    assert calls == []
    # a changed file changes the key
    CifWriter(crystals[5][1]).write_file(folder / f"{crystals[0][0]}.cif")
    os.utime(folder / f"{crystals[0][0]}.cif", ns=(1, 1))
    build_graphs(load_dataset(folder).entries, workers=1)
    assert len(calls) == 4


def test_bad_json_data_is_refused_naming_the_file_and_the_record(tmp_path):
    """Was: 'Expecting value: line 1 column 1 (char 0)', naming neither the file nor the record."""
    (name, s), = make_structures(1)
    good = json.dumps({"id": name, "structure": s.as_dict(), "y": 1.0})
    (tmp_path / "d.jsonl").write_text(f"{good}\n\n{good}\n{good[:30]}\n")
    with pytest.raises(DatasetError, match=r"d\.jsonl: line 4 is not valid JSON \(.*char"):
        load_dataset(tmp_path / "d.jsonl", "y")
    (tmp_path / "t.json").write_text(f"[{good}, {good[:40]}")
    with pytest.raises(DatasetError, match=r"t\.json: invalid or truncated JSON: "):
        load_dataset(tmp_path / "t.json", "y")
    (tmp_path / "w.json").write_text(json.dumps({"records": [json.loads(good), 7]}))
    with pytest.raises(DatasetError, match=r"w\.json: record 2 is not a JSON object"):
        load_dataset(tmp_path / "w.json", "y")


def _json_with_splits(path, crystals, splits, key="split"):
    path.write_text(json.dumps([{"id": n, "structure": s.as_dict(), "y": synthetic_target(s), key: split}
                                for (n, s), split in zip(crystals, splits)]))
    return path


def test_a_split_column_is_used_or_refused_never_ignored(tmp_path, crystals):
    """Was: one value outside train/val/test (or one blank) set the whole column aside for a random split,
    and the rows meant for testing were trained on."""
    names = [n for n, _ in crystals[:6]]
    spelled = _json_with_splits(tmp_path / "spelled.json", crystals[:6],
                                ["train", "Train", "validation", "dev", "test", "TEST"], key="Split")
    dataset = load_dataset(spelled, "y")
    assert dataset.split_source == "split column"
    assert [e.split for e in dataset.entries] == ["train", "train", "val", "val", "test", "test"]
    for splits, odd, shown in ((["train", "train", "val", "holdout", "test", "test"], 3, "holdout"),
                               (["train", " ", "val", "val", "test", "test"], 1, "blank")):
        path = _json_with_splits(tmp_path / "odd.json", crystals[:6], splits)
        with pytest.raises(DatasetError) as refused:
            load_dataset(path, "y")
        message = str(refused.value)
        assert str(path) in message and names[odd] in message and shown in message
        assert names[0] not in message


def test_split_json_is_read_as_written_or_refused(tmp_path, crystals):
    """Was: a 'validation' key and ids with stray spaces fell to training, an id in two lists went to the
    last, and an unknown key was ignored."""
    path = _write_json(tmp_path / "data.json", crystals)
    names = [n for n, _ in crystals]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": names[:6], "validation": [f" {names[6]}", f"{names[7]} "], "test": names[8:],
                                 "seed": 42}))
    dataset = load_dataset(path, "y")
    assert [e.id for e in dataset.split("val")] == names[6:8] and len(dataset.split("train")) == 6
    split.write_text(json.dumps({"train": names[:6], "val": names[5:8]}))
    with pytest.raises(DatasetError) as twice:
        load_dataset(path, "y")
    assert str(split) in str(twice.value) and names[5] in str(twice.value) and names[6] not in str(twice.value)
    split.write_text(json.dumps({"train": names[:6], "holdout": names[6:]}))
    with pytest.raises(DatasetError) as unknown:
        load_dataset(path, "y")
    assert str(split) in str(unknown.value) and "holdout" in str(unknown.value)
    split.write_text("{not json")
    with pytest.raises(DatasetError, match="split.json"):
        load_dataset(path, "y")


def test_a_record_of_several_structures_is_skipped_naming_the_file_and_the_count(tmp_path, crystals):
    """Was: train and evaluate took the first structure of a multi-block CIF or a multi-frame extended XYZ
    (of a relaxation trajectory, the strained first frame) without a word, where predict gives every one."""
    pytest.importorskip("ase")
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    (_, first), (_, second), (_, single) = crystals[:3]
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "combo.cif").write_text(f"{CifWriter(first)}\n{CifWriter(second)}")
    write(folder / "traj.extxyz", [AseAtomsAdaptor.get_atoms(s) for s in (first, second, single)], format="extxyz")
    CifWriter(single).write_file(folder / "single.cif")
    (folder / "id_prop.csv").write_text("combo,1.0\ntraj.extxyz,2.0\nsingle,3.0\n")
    entries = load_dataset(folder).entries
    graphs, errors = build_graphs(entries, workers=1)
    reasons = dict(zip([e.id for e in entries], errors))
    assert graphs[2] is not None and reasons["single"] == ""
    assert graphs[0] is None and "combo.cif" in reasons["combo"] and "2 structures" in reasons["combo"]
    assert graphs[1] is None and "traj.extxyz" in reasons["traj.extxyz"] and "3 structures" in reasons["traj.extxyz"]
    again, cached = build_graphs(entries, workers=1)  # the cache keeps the refusal, not a graph of the first
    assert again[0] is None and cached == errors
    text = tmp_path / "text.json"  # structure text in the record itself
    text.write_text(json.dumps([{"id": "both", "structure": f"{CifWriter(first)}\n{CifWriter(second)}", "y": 1.0},
                                {"id": "one", "structure": str(CifWriter(single)), "y": 2.0}]))
    graphs, errors = build_graphs(load_dataset(text, "y").entries, workers=1)
    assert graphs[0] is None and "both" in errors[0] and "2 structures" in errors[0] and graphs[1] is not None


def _folder_of(tmp_path, crystals):
    folder = tmp_path / "cgcnn"
    folder.mkdir()
    with open(folder / "id_prop.csv", "w") as handle:
        for name, s in crystals:
            CifWriter(s).write_file(folder / f"{name}.cif")
            handle.write(f"{name},{synthetic_target(s)}\n")
    return load_dataset(folder)


def test_graphs_made_under_a_time_limit_are_not_cached(tmp_path, crystals, monkeypatch):
    """Was: a read that timed out on a loaded machine was cached as a failure for good, and a canonical-cell
    search that timed out left a graph of the cell as given, cached as the canonical one."""
    from crystalprop.data import graph_cache

    dataset = _folder_of(tmp_path, crystals[:4])
    limit = graph_cache.READ_TIMEOUT_S
    monkeypatch.setattr(graph_cache, "READ_TIMEOUT_S", 1e-9)
    graphs, errors = build_graphs(dataset.entries, workers=1)
    assert all(g is None for g in graphs) and "longer than" in errors[0]
    monkeypatch.setattr(graph_cache, "READ_TIMEOUT_S", limit)
    graphs, errors = build_graphs(dataset.entries, workers=1)
    assert all(g is not None for g in graphs), errors
    fallback = tmp_path / "fallback"
    fallback.mkdir()
    monkeypatch.setenv("CRYSTALPROP_CACHE", str(fallback))
    real_cell, real_build = graph_cache.cell_for_graph, graph_cache._build_one
    monkeypatch.setattr(graph_cache, "cell_for_graph", lambda crystal, cell: (
        crystal, "canonical cell search took longer than 10 s; used the cell as given"))
    build_graphs(dataset.entries, workers=1)
    monkeypatch.setattr(graph_cache, "cell_for_graph", real_cell)
    calls = []
    monkeypatch.setattr(graph_cache, "_build_one", lambda job: calls.append(job) or real_build(job))
    build_graphs(dataset.entries, workers=1)
    assert len(calls) == 4  # built again on the canonical cells, not served from the cache
    build_graphs(dataset.entries, workers=1)
    assert len(calls) == 4  # and those are cached
    failed = tmp_path / "failed"
    failed.mkdir()
    monkeypatch.setenv("CRYSTALPROP_CACHE", str(failed))
    monkeypatch.setattr(graph_cache, "cell_for_graph", lambda crystal, cell: (
        crystal, "canonical cell search failed (no symmetry found); used the cell as given"))
    build_graphs(dataset.entries, workers=1)
    monkeypatch.setattr(graph_cache, "cell_for_graph", real_cell)
    build_graphs(dataset.entries, workers=1)
    assert len(calls) == 8  # a search that fails (no time limit) fails again: its graphs are cached


def test_the_graph_cache_key_follows_the_code_that_reads_and_builds(tmp_path, crystals, monkeypatch):
    """Was: graphs built by an older version's readers (before a fix that changed some structures) were reused."""
    from crystalprop.data import graph_cache

    dataset = _folder_of(tmp_path, crystals[:2])
    source = tmp_path / "readers.py"
    source.write_text("version = 1\n")
    real_files = graph_cache._builder_files
    monkeypatch.setattr(graph_cache, "_builder_files", lambda: [source])
    graph_cache.builder_fingerprint.cache_clear()
    before = graph_cache.cache_key(dataset.entries, GraphSettings())
    source.write_text("version = 2\n")
    graph_cache.builder_fingerprint.cache_clear()
    assert graph_cache.cache_key(dataset.entries, GraphSettings()) != before
    monkeypatch.setattr(graph_cache, "_builder_files", real_files)
    graph_cache.builder_fingerprint.cache_clear()
    names = {path.name for path in graph_cache._builder_files()}
    assert {"readers.py", "neighbors.py", "cells.py", "graph_cache.py"} <= names


def test_the_graph_cache_closes_its_files(tmp_path, crystals):
    """Was: ``np.savez(open(tmp, "wb"))`` and ``np.load(path)`` left their files to the garbage
    collector (a ResourceWarning each, and an open handle per cached data set on Windows)."""
    import gc
    import warnings

    from crystalprop.data import graph_cache
    from crystalprop.graph import build_graph
    from crystalprop.io.adapters import crystal_from_structure

    graphs = [build_graph(crystal_from_structure(s)) for _, s in crystals[:2]]
    path = tmp_path / "graphs.npz"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph_cache._save(path, ["a", "b"], graphs, ["", ""])
        loaded, _ = graph_cache._load(path)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    np.testing.assert_array_equal(loaded[1].src, graphs[1].src)


def _cif_folder(folder, crystals):
    folder.mkdir()
    for name, s in crystals:
        CifWriter(s).write_file(folder / f"{name}.cif")
    return folder


def test_a_folder_with_two_label_tables_is_refused_naming_both(tmp_path, crystals):
    """Was: id_prop.csv was read without a word beside a properties.csv, and its unnamed second column took
    whatever --target name was asked for (Poisson ratios evaluated as K_VRH)."""
    folder = _cif_folder(tmp_path / "two", crystals)
    (folder / "id_prop.csv").write_text("".join(f"{n},0.3\n" for n, _ in crystals))
    (folder / "properties.csv").write_text("material_id,K_VRH\n" + "".join(f"{n},100\n" for n, _ in crystals))
    with pytest.raises(DatasetError, match=r"two.*id_prop\.csv.*properties\.csv"):
        load_dataset(folder, "K_VRH")


def test_column_names_that_are_numbers_are_a_header_when_the_target_names_one(tmp_path, crystals):
    """Was: a header such as material_id,300,1000 read as a record, and --target 1000 took column 300."""
    folder = _cif_folder(tmp_path / "temps", crystals)
    rows = [(n, 10 + k, 20 + k) for k, (n, _) in enumerate(crystals)]
    (folder / "props.csv").write_text("material_id,300,1000\n" + "".join(f"{n},{a},{b}\n" for n, a, b in rows))
    dataset = load_dataset(folder, "1000")
    assert [e.target for e in dataset.entries] == [b for _, _, b in rows] and not dataset.skipped
    with pytest.raises(DatasetError, match=r"props\.csv.*3 columns.*header"):
        load_dataset(folder, "y")  # no header it can tell, and three columns: which is the label?


def test_a_split_column_and_a_split_json_that_disagree_are_refused(tmp_path, crystals):
    """Was: a split.json beside the data silently replaced the data's own split column (its test rows were
    trained on)."""
    names = [n for n, _ in crystals[:6]]
    path = _json_with_splits(tmp_path / "cols.json", crystals[:6], ["train", "train", "val", "val", "test", "test"])
    (tmp_path / "split.json").write_text(json.dumps({"train": names[:4], "val": names[4:]}))
    with pytest.raises(DatasetError) as refused:
        load_dataset(path, "y")
    message = str(refused.value)
    assert "split.json" in message and "split column" in message and names[2] in message
    (tmp_path / "split.json").write_text(json.dumps({"train": names[:2], "val": names[2:4], "test": names[4:]}))
    assert [e.split for e in load_dataset(path, "y").entries] == ["train", "train", "val", "val", "test", "test"]


def test_split_json_ids_that_match_no_record_are_told(tmp_path, crystals):
    """Was: ids of split.json that match no record (a stray .cif suffix) were ignored without a word, and the
    structures meant for validation were trained on."""
    path = _write_json(tmp_path / "data.json", crystals)
    names = [n for n, _ in crystals]
    (tmp_path / "split.json").write_text(json.dumps({"train": names[:8], "val": [f"{n}.cif" for n in names[8:]]}))
    dataset = load_dataset(path, "y")
    assert any("4" in note and f"{names[8]}.cif" in note and "val" in note for note in dataset.notes)
    (tmp_path / "split.json").write_text(json.dumps({"train": names[:8], "val": names[8:]}))
    assert load_dataset(path, "y").notes == []


def test_split_json_ids_differing_only_in_case_are_told_as_such(tmp_path, crystals):
    """Test ids upper-cased in split.json matched no record, and the note did not say why (hunt10 11)."""
    path = _write_json(tmp_path / "data.json", crystals)
    names = [n for n, _ in crystals]
    (tmp_path / "split.json").write_text(json.dumps({"train": names[:8], "test": [n.upper() for n in names[8:]]}))
    notes = load_dataset(path, "y").notes
    assert any(f"4 of them differ from a record's id only in letter case (e.g. {names[8].upper()} and {names[8]})"
               in note for note in notes), notes


def test_no_usable_records_gives_the_reasons_and_an_unknown_id_column_is_named(tmp_path, crystals):
    """Was: only 'no usable records (N skipped)', with no reason (values with units, a mistyped --id-column)."""
    folder = _cif_folder(tmp_path / "units", crystals)
    (folder / "properties.csv").write_text("material_id,K_VRH\n" + "".join(f"{n},273.0 GPa\n" for n, _ in crystals))
    with pytest.raises(DatasetError, match=r"no usable records.*'273\.0 GPa'"):
        load_dataset(folder, "K_VRH")
    (folder / "properties.csv").write_text("material_id,K_VRH\n" + "".join(f"{n},273\n" for n, _ in crystals))
    with pytest.raises(DatasetError, match=r"no column 'mpid'.*material_id"):
        load_dataset(folder, "K_VRH", id_column="mpid")


def test_a_null_id_is_named_by_its_position(tmp_path, crystals):
    path = tmp_path / "null.json"
    path.write_text(json.dumps([{"id": None, "structure": s.as_dict(), "y": 1.0} for _, s in crystals[:3]]))
    assert [e.id for e in load_dataset(path, "y").entries] == ["row1", "row2", "row3"]


def test_a_folder_finds_extended_xyz_files_by_their_stem(tmp_path, crystals):
    """Was: traj.extxyz matched only the id 'traj.extxyz', and the message listed other suffixes."""
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    folder = tmp_path / "xyz"
    folder.mkdir()
    for name, s in crystals[:3]:
        ase.io.write(folder / f"{name}.extxyz", AseAtomsAdaptor.get_atoms(s), format="extxyz")
    (folder / "id_prop.csv").write_text("".join(f"{n},1.0\n" for n, _ in crystals[:3]))
    dataset = load_dataset(folder)
    assert not dataset.skipped and [e.source for e in dataset.entries] == [
        str(folder / f"{n}.extxyz") for n, _ in crystals[:3]]


def test_a_structure_path_in_json_is_read_from_the_json_s_folder(tmp_path, crystals, monkeypatch):
    """Was: a path in a JSON record's structure field was looked up from the working directory."""
    folder = tmp_path / "set"
    (folder / "structures").mkdir(parents=True)
    for name, s in crystals[:3]:
        CifWriter(s).write_file(folder / "structures" / f"{name}.cif")
    (folder / "data.json").write_text(json.dumps([{"id": n, "structure": f"structures/{n}.cif", "y": 1.0}
                                                  for n, _ in crystals[:3]]))
    monkeypatch.chdir(tmp_path)
    dataset = load_dataset("set/data.json", "y")
    assert [e.source for e in dataset.entries] == [str(folder / "structures" / f"{n}.cif") for n, _ in crystals[:3]]
    assert _same_structure(entry_structure(dataset.entries[0].source, "x"), crystals[0][1])


def test_structure_files_no_row_names_are_told(tmp_path, crystals):
    """Was: a structure file that no row of the table names was left out without a word."""
    folder = _cif_folder(tmp_path / "extra", crystals)
    (folder / "id_prop.csv").write_text("".join(f"{n},1.0\n" for n, _ in crystals[:-2]))
    notes = load_dataset(folder).notes
    assert notes == [f"{folder}: 2 structure files named by no row of id_prop.csv, left out "
                     f"(e.g. {crystals[-2][0]}.cif, {crystals[-1][0]}.cif)"]
    (folder / "id_prop.csv").write_text("".join(f"{n},1.0\n" for n, _ in crystals))
    assert load_dataset(folder).notes == []
    # crystalprop's own outputs beside the data are not structures (they were counted as such)
    (folder / "predictions.csv.meta.json").write_text(json.dumps({"crystalprop_provenance": {}}))
    (folder / "predicted.json").write_text(json.dumps({"crystalprop_provenance": {}, "rows": []}))
    (folder / "metrics.json").write_text(json.dumps({"model": "m", "checkpoint": "m.ckpt", "n": 3}))
    assert load_dataset(folder).notes == []


def test_a_structure_given_as_long_one_line_text_still_loads(tmp_path, crystals):
    """A pymatgen structure stored as a JSON string (one line, thousands of characters) was taken for a
    file path to look for beside the data, and the file name was too long for the system."""
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"id": n, "structure": json.dumps(s.as_dict()), "y": 1.0} for n, s in crystals[:3]]))
    dataset = load_dataset(path, "y")
    assert len(dataset.entries) == 3 and len(dataset.entries[0].source) > 255


def test_a_headerless_table_with_trailing_commas_keeps_its_two_columns(tmp_path, crystals):
    folder = _cif_folder(tmp_path / "tc", crystals)
    (folder / "id_prop.csv").write_text("".join(f"{n},0.5,\n" for n, _ in crystals))
    assert [e.target for e in load_dataset(folder).entries] == [0.5] * len(crystals)


def test_id_column_is_honoured_or_refused_in_every_layout(tmp_path, crystals):
    """Was: ignored by JSON data sets without a word, and a header-less id_prop.csv named every id row<N>."""
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"mpid": f"x-{n}", "structure": s.as_dict(), "y": 1.0} for n, s in crystals[:3]]))
    assert [e.id for e in load_dataset(path, "y", id_column="mpid").entries] == [f"x-{n}" for n, _ in crystals[:3]]
    with pytest.raises(DatasetError, match=r"data\.json.*no field 'jid'"):
        load_dataset(path, "y", id_column="jid")
    folder = _cif_folder(tmp_path / "cg", crystals)
    (folder / "id_prop.csv").write_text("".join(f"{n},0.5\n" for n, _ in crystals))
    with pytest.raises(DatasetError, match=r"id_prop\.csv.*no header.*--id-column"):
        load_dataset(folder, id_column="mpid")


@pytest.mark.parametrize("header", ["material_id,y,y", "material_id,material_id,y", "material_id,y,note,note"])
def test_a_table_naming_a_column_twice_is_refused_naming_the_file_and_the_column(tmp_path, crystals, header):
    """Was: the last of the equal names was read without a word (a band gap trained on as a formation energy)."""
    folder = _cif_folder(tmp_path / "dup", crystals[:3])
    (folder / "properties.csv").write_text(header + "\n" + "".join(
        f"{n}," + ",".join(["0.5"] * (header.count(",") - 1)) + f",{k}\n" for k, (n, _) in enumerate(crystals[:3])))
    repeated = next(name for name in header.split(",") if header.split(",").count(name) > 1)
    with pytest.raises(DatasetError) as refused:
        load_dataset(folder, "y")
    assert str(refused.value) == (f"{folder / 'properties.csv'}: the header names the column {repeated!r} twice "
                                  "(only one would be read): rename or drop one")
    texts = tmp_path / "texts.csv"
    with open(texts, "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "structure", "y", "structure"]]
                                     + [[n, s.to(fmt="poscar"), "1", s.to(fmt="poscar")] for n, s in crystals[:2]])
    with pytest.raises(DatasetError, match=r"texts\.csv: the header names the column 'structure' twice"):
        load_dataset(texts, "y")


def test_a_header_s_unnamed_columns_may_repeat(tmp_path, crystals):
    """A spreadsheet's trailing commas make several blank names: columns nothing reads, not a repeat."""
    folder = _cif_folder(tmp_path / "blank", crystals[:3])
    (folder / "properties.csv").write_text("id,y,,\n" + "".join(f"{n},0.5,,\n" for n, _ in crystals[:3]))
    assert [e.target for e in load_dataset(folder, "y").entries] == [0.5] * 3


def test_a_json_record_naming_a_key_twice_is_refused_naming_the_file_the_record_and_the_key(tmp_path, crystals):
    """Was: JSON kept the last value of a repeated key without a word."""
    records = [json.dumps({"id": n, "structure": s.as_dict(), "y": 1.0}) for n, s in crystals[:3]]
    records[1] = records[1][:-1] + ', "y": 2.0}'
    path = tmp_path / "data.json"
    path.write_text("[" + ",\n".join(records) + "]")
    with pytest.raises(DatasetError) as refused:
        load_dataset(path, "y")
    assert str(refused.value) == f"{path}: record 2 names the key 'y' twice (only one would be read): rename or drop one"
    lines = tmp_path / "data.jsonl"
    lines.write_text("\n".join(records) + "\n")
    with pytest.raises(DatasetError, match=r"data\.jsonl: record 2 names the key 'y' twice"):
        load_dataset(lines, "y")
    structure = json.dumps(crystals[0][1].as_dict())[:-1] + ', "charge": 0.0}'  # as_dict has a charge
    inner = tmp_path / "inner.json"
    inner.write_text('[{"id": "a", "y": 1.0, "structure": ' + structure + "}]")
    with pytest.raises(DatasetError, match=r"inner\.json: record 1 holds an object naming the key 'charge' twice"):
        load_dataset(inner, "y")


def test_ids_naming_one_structure_file_are_refused_as_duplicates(tmp_path, crystals):
    """Was: m-001 and m-001.cif were two records of one file, with two labels (one crystal in train and val)."""
    folder = tmp_path / "ext"
    (folder / "structures").mkdir(parents=True)
    names = [n for n, _ in crystals[:4]]
    for name, s in crystals[:4]:
        CifWriter(s).write_file(folder / "structures" / f"{name}.cif")
    rows = names + [f"{names[1]}.cif", f"{names[3]}.cif"]
    (folder / "properties.csv").write_text("id,y\n" + "".join(f"{rid},{k}\n" for k, rid in enumerate(rows)))
    with pytest.raises(DatasetError) as refused:
        load_dataset(folder, "y")
    assert str(refused.value) == (
        f"{folder / 'properties.csv'}: 2 structure file(s) named by more than one id: {names[1]} and {names[1]}.cif "
        f"(structures/{names[1]}.cif), {names[3]} and {names[3]}.cif (structures/{names[3]}.cif); keep one row for each")
    (folder / "properties.csv").write_text("id,y\n" + "".join(f"{rid},{k}\n" for k, rid in enumerate(rows[:5])))
    (folder / "structures" / f"{names[1]}.vasp").write_text("")  # m-001 names two files: skipped, not a duplicate
    dataset = load_dataset(folder, "y")
    assert [e.id for e in dataset.entries] == [names[0], names[2], names[3], f"{names[1]}.cif"]
    assert [rid for rid, _ in dataset.skipped] == [names[1]]


@pytest.mark.parametrize("first", ["", "formula"])
def test_ids_that_name_no_structure_file_name_their_column_and_the_id_column(tmp_path, crystals, first):
    """Was: 'no structure file named 0' for a table led by a pandas index (or a formula) column, without a word
    that a folder table's ids come from its first column, nor of the material_id column beside it."""
    folder = _cif_folder(tmp_path / "idx", crystals[:3])
    (folder / "properties.csv").write_text(f"{first},material_id,y\n" + "".join(
        f"{s.composition.reduced_formula if first else k},{n},0.5\n" for k, (n, s) in enumerate(crystals[:3])))
    with pytest.raises(DatasetError) as refused:
        load_dataset(folder, "y")
    shown = crystals[0][1].composition.reduced_formula if first else "0"
    message = str(refused.value)
    assert message.startswith(f"{folder / 'properties.csv'}: no row's id names a structure file (the ids are read "
                              f"from its first column, {first!r}; e.g. {shown}: no structure file named {shown} or ")
    assert message.endswith("); try --id-column material_id")
    assert [e.id for e in load_dataset(folder, "y", id_column="material_id").entries] == [n for n, _ in crystals[:3]]
    (folder / "properties.csv").write_text("formula,id,y\n" + "".join(f"x{n},x{n},0.5\n" for n, _ in crystals[:3]))
    with pytest.raises(DatasetError, match=r"first column, 'formula'.*; try --id-column id$"):
        load_dataset(folder, "y")  # no column names the files: one named like an id is suggested
    with pytest.raises(DatasetError, match=r"ids are read from the column 'id' \(--id-column\); e\.g\. x.*\)$"):
        load_dataset(folder, "y", id_column="id")
    (folder / "id_prop.csv").write_text("".join(f"x{n},0.5\n" for n, _ in crystals[:3]))
    (folder / "properties.csv").unlink()
    with pytest.raises(DatasetError, match=r"ids are read from its first column; e\.g\. x.*\)$"):
        load_dataset(folder)


def test_a_table_of_structure_text_without_an_id_column_says_its_ids_are_row_numbers(tmp_path):
    """A CSV with columns name, cif, Eg named its structures row7, row23, ...: later commands then took the
    model's own data for other data, and nothing said why or named --id-column; a missing structure column did
    not name --structure-column (hunt14 8)."""
    from pymatgen.io.cif import CifWriter

    from conftest import rocksalt

    table = tmp_path / "inline.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "cif", "Eg"])
        for k in range(4):
            writer.writerow([f"x{k}", str(CifWriter(rocksalt(5.5 + 0.1 * k))), 1.0 + k])
    dataset = load_dataset(table, "Eg", structure_column="cif")
    assert any("--id-column" in note and "row" in note for note in dataset.notes), dataset.notes
    named = load_dataset(table, "Eg", structure_column="cif", id_column="name")
    assert not any("--id-column" in note for note in named.notes)
    with pytest.raises(DatasetError, match="--structure-column"):
        load_dataset(table, "Eg")


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_table_separated_by_semicolons_or_tabs_is_refused_as_such(tmp_path, crystals, separator):
    """A spreadsheet's export in a European locale (semicolons, decimal commas) or a TSV was refused with its header
    line shown as an id that names no file, and --target never mentioned (hunt16 4)."""
    folder = tmp_path / "semi"
    folder.mkdir()
    lines = [f"material_id{separator}band_gap"]
    for name, s in crystals:
        CifWriter(s).write_file(folder / f"{name}.cif")
        lines.append(f"{name}{separator}{str(synthetic_target(s)).replace('.', ',')}")
    (folder / "properties.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="separated by") as refused:
        load_dataset(folder, "band_gap")
    assert "commas" in str(refused.value) and "properties.csv" in str(refused.value)


def test_an_extended_xyz_whose_frames_carry_their_labels_is_a_data_set(tmp_path, crystals):
    """`train data.extxyz -t band_gap`, the frames' labels in ASE's info (a common ASE workflow), failed with
    "invalid or truncated JSON", while predict reads the file (hunt16 3). Energies that ASE files among the
    calculator's results count as fields too; a frame that is no crystal is skipped, with its reason, where the graphs are built."""
    ase_io = pytest.importorskip("ase.io")
    from ase import Atoms  # noqa: PLC0415
    from ase.calculators.singlepoint import SinglePointCalculator  # noqa: PLC0415
    from pymatgen.io.ase import AseAtomsAdaptor  # noqa: PLC0415

    from crystalprop.data.graph_cache import entry_structure  # noqa: PLC0415

    frames = []
    for k, (name, s) in enumerate(crystals):
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.info = {"material_id": name, "band_gap": synthetic_target(s)}
        atoms.calc = SinglePointCalculator(atoms, energy=-3.0 * k)
        frames.append(atoms)
    frames.append(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], info={"material_id": "h2", "band_gap": 10.0}))
    ase_io.write(tmp_path / "data.extxyz", frames, format="extxyz")
    dataset = load_dataset(tmp_path / "data.extxyz", "band_gap")
    assert [e.id for e in dataset.entries] == [name for name, _ in crystals] + ["h2"]
    assert [e.target for e in dataset.entries] == pytest.approx([synthetic_target(s) for _, s in crystals] + [10.0])
    for entry, (_, s) in zip(dataset.entries, crystals):
        assert entry_structure(entry.source, entry.id).matches(s)
    with pytest.raises(Exception, match="periodic"):  # a graph's build skips it with this reason
        entry_structure(dataset.entries[-1].source, "h2")
    energies = load_dataset(tmp_path / "data.extxyz", "energy")
    assert [e.target for e in energies.entries] == pytest.approx([-3.0 * k for k in range(len(crystals))])
    with pytest.raises(DatasetError, match="band_gap.*energy|energy.*band_gap"):
        load_dataset(tmp_path / "data.extxyz")  # two numeric fields: --target chooses


def test_a_structure_file_is_refused_as_a_data_set_naming_the_layouts(tmp_path, crystals):
    """`train NaCl.cif` said "invalid or truncated JSON" (hunt16 3)."""
    CifWriter(crystals[0][1]).write_file(tmp_path / "one.cif")
    with pytest.raises(DatasetError, match="structure file, not a data set") as refused:
        load_dataset(tmp_path / "one.cif", "y")
    assert "id_prop.csv" in str(refused.value) and "JSON" in str(refused.value)
