"""One reader with one set of limits: data sets are read like structure files; each limit is defined once."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from pymatgen.core import Structure

from conftest import write_json_dataset
from crystalprop.io import limits
from crystalprop.data.datasets import DatasetError, load_dataset

PACKAGE = Path(__file__).resolve().parents[1] / "crystalprop"


def test_gzip_data_set_beyond_the_limit_is_refused(tmp_path, monkeypatch):
    plain = write_json_dataset(tmp_path / "data.json", 20)
    packed = tmp_path / "data.json.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert len(load_dataset(packed, "y").entries) == 20
    monkeypatch.setattr(limits, "MAX_DATASET_BYTES", plain.stat().st_size - 1)
    with pytest.raises(DatasetError, match=r"data\.json\.gz: decompressed size exceeds the .* limit"):
        load_dataset(packed, "y")


def test_gzip_table_is_read_through_the_limits(tmp_path, monkeypatch):
    rows = "id,y,structure\n" + "".join(f"m{i},{i},x\n" for i in range(200))
    (tmp_path / "table.csv.gz").write_bytes(gzip.compress(rows.encode()))
    monkeypatch.setattr(limits, "MAX_DATASET_BYTES", 1000)
    with pytest.raises(DatasetError, match="table.csv.gz: decompressed size exceeds"):
        load_dataset(tmp_path / "table.csv.gz", "y", structure_column="structure")


@pytest.mark.parametrize("pattern", [r"^READ_TIMEOUT_S\s*=", r"^(STRUCTURE_SUFFIXES|MAX_FILE_BYTES)\s*="])
def test_each_limit_is_defined_once(pattern):
    found = [(p.relative_to(PACKAGE).as_posix(), line) for p in sorted(PACKAGE.rglob("*.py"))
             for line in p.read_text().splitlines() if re.match(pattern, line)]
    names = {re.match(r"\w+", line).group() for _, line in found}
    assert len(found) == len(names), found


def test_folder_data_set_finds_gzipped_and_upper_case_structure_files(tmp_path):
    records = json.loads(write_json_dataset(tmp_path / "records.json", 3).read_text())
    names = ["a.cif.gz", "b.VASP", "c.json"]
    for record, name in zip(records, names):
        structure = Structure.from_dict(record["structure"])
        text = structure.to(fmt="cif" if "cif" in name else "poscar" if "VASP" in name else "json")
        target = tmp_path / "data" / name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    (tmp_path / "data" / "id_prop.csv").write_text("".join(f"{n.split('.')[0]},1.5\n" for n in names))
    dataset = load_dataset(tmp_path / "data")
    assert sorted(e.id for e in dataset.entries) == ["a", "b", "c"] and not dataset.skipped
