"""Tests for crystalprop.predict and the predict / inspect / models commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pymatgen.io.cif import CifWriter

from conftest import (CLI, TINY, _random_checkpoint, cell_graph_of, graph_of, make_structures, perovskite, rocksalt,
                      rocksalt_conventional, run_cli)
from crystalprop.utils.backend import mindspore_module, set_device

set_device("CPU")
ms = mindspore_module()

from crystalprop import predict  # noqa: E402
from crystalprop.graph import GraphSettings  # noqa: E402
from crystalprop.model.checkpoint import load_model  # noqa: E402
from crystalprop.model.inference import predict_graphs  # noqa: E402
from conftest import read_csv  # noqa: E402
from crystalprop.prediction.output import is_finished, read_rows  # noqa: E402

pytestmark = pytest.mark.slow

COLUMNS = ["name", "source", "formula", "n_sites", "rand", "error", "warning"]


def _graph(structure, settings=GraphSettings()):
    """The graph the predictor builds: on the cell that ``settings.cell`` names."""
    return cell_graph_of(structure, settings)


def _expected(ckpt: Path, structures, settings=GraphSettings()) -> np.ndarray:
    """Physical-unit predictions computed directly from the network."""
    net, card = load_model(ckpt)
    return card.transform.physical(predict_graphs(net, [_graph(s, settings) for s in structures]))


@pytest.fixture()
def files(tmp_path):
    """a.cif (NaCl, conventional), b.vasp (MgO), c.cif (SrTiO3), POSCAR_d (KCl) in tmp_path/in."""
    folder = tmp_path / "in"
    folder.mkdir()
    structures = {"a.cif": rocksalt_conventional(5.64), "b.vasp": rocksalt(4.21, "Mg", "O"),
                  "c.cif": perovskite(3.905), "POSCAR_d": rocksalt(6.29, "K", "Cl")}
    for name, s in structures.items():
        if name.endswith(".cif"):
            CifWriter(s).write_file(folder / name)
        else:
            s.to(filename=str(folder / name), fmt="poscar")
    return folder, structures


def assert_columns(header) -> None:
    """The documented columns, in this order (other columns, e.g. an input index, may sit between)."""
    assert [c for c in header if c in COLUMNS] == COLUMNS, header


# --- the Python API ------------------------------------------------------------------------------


def test_prepared_structure_fields():
    """Regression (5ada685): the `index` field inserted into Prepared took the formula positionally."""
    from crystalprop.graph import GraphSettings
    from crystalprop.prediction.predictor import iter_prepared

    structure = perovskite(3.905)
    (item,) = iter_prepared([structure], GraphSettings(), workers=0)
    assert (item.name, item.formula, item.n_sites, item.error) == ("structure0", "SrTiO3", 5, None)
    assert item.graph is not None and item.graph.num_nodes == 5


def test_formula_of_an_element_counts_its_atoms_not_a_molecule():
    """pymatgen's reduced formula writes elemental H, N, O, F, Cl, ... as diatomic molecules ("H2"), so a
    one-site hydrogen cell was listed as H2 beside "sites 1"; a crystal's formula names no molecule."""
    from pymatgen.core import Lattice, Structure

    from crystalprop.graph import GraphSettings
    from crystalprop.io.ase_reader import reduced_formula
    from crystalprop.prediction.predictor import iter_prepared

    cells = [Structure(Lattice.cubic(3.0), [el], [[0, 0, 0]]) for el in ("H", "O", "Cl", "Cu")]
    cells.append(Structure(Lattice.cubic(4.0), ["H", "H", "O"], [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0.5]]))
    assert [item.formula for item in iter_prepared(cells, GraphSettings(), workers=0)] == ["H", "O", "Cl", "Cu", "H2O"]
    ase = pytest.importorskip("ase")
    assert reduced_formula(ase.Atoms("H2", cell=[3, 3, 3], pbc=True)) == "H"


def test_predict_files_and_missing_file_in_order(files, random_ckpt):
    folder, structures = files
    inputs = [folder / "c.cif", folder / "a.cif", folder / "missing.cif", folder / "b.vasp", folder / "POSCAR_d"]
    rows = predict([str(p) for p in inputs], model=str(random_ckpt), workers=0)
    assert [r["name"] for r in rows] == [str(p) for p in inputs]
    assert [bool(r["error"]) for r in rows] == [False, False, True, False, False]
    assert "no such file" in rows[2]["error"] and rows[2]["rand"] is None
    assert [r["formula"] for r in rows] == ["SrTiO3", "NaCl", "", "MgO", "KCl"]
    assert [r["n_sites"] for r in rows] == [5, 8, 0, 2, 2]
    order = ["c.cif", "a.cif", "b.vasp", "POSCAR_d"]
    got = [r["rand"] for r in rows if not r["error"]]
    np.testing.assert_allclose(got, _expected(random_ckpt, [structures[n] for n in order]), rtol=1e-5)
    assert len(set(np.round(got, 6))) == 4  # a random model still tells the crystals apart


def test_predict_structures_and_single_path(files, random_ckpt):
    folder, structures = files
    objects = [structures["b.vasp"], structures["c.cif"]]
    rows = predict(objects, model=str(random_ckpt))
    assert [r["name"] for r in rows] == ["structure0", "structure1"]
    np.testing.assert_allclose([r["rand"] for r in rows], _expected(random_ckpt, objects), rtol=1e-5)
    single = predict(str(folder / "a.cif"), model=str(random_ckpt))
    assert len(single) == 1 and single[0]["formula"] == "NaCl"
    np.testing.assert_allclose(single[0]["rand"], _expected(random_ckpt, [structures["a.cif"]])[0], rtol=1e-5)


def test_cell_as_given_keeps_the_old_graphs(files, random_ckpt):
    """``cell="as-given"`` predicts on the file's own cell, as before the canonical cell; the default
    gives a conventional and a primitive cell of one crystal the same number."""
    _, structures = files
    conventional, primitive = structures["a.cif"], rocksalt(5.64)
    as_given = [r["rand"] for r in predict([conventional, primitive], model=str(random_ckpt), cell="as-given")]
    net, card = load_model(random_ckpt)
    old = card.transform.physical(predict_graphs(net, [graph_of(conventional), graph_of(primitive)]))
    np.testing.assert_allclose(as_given, old, rtol=1e-5)
    assert as_given[0] != pytest.approx(as_given[1], rel=1e-3)
    canonical = [r["rand"] for r in predict([conventional, primitive], model=str(random_ckpt))]
    assert canonical[0] == pytest.approx(canonical[1], rel=1e-5)
    with pytest.raises(ValueError, match="unknown cell setting"):
        predict(primitive, model=str(random_ckpt), cell="primitive")


def test_predict_mixed_structures_and_files_keeps_input_order(files, random_ckpt):
    folder, structures = files
    inputs = [str(folder / "a.cif"), structures["c.cif"], str(folder / "missing.cif"), str(folder / "b.vasp"),
              structures["POSCAR_d"]]
    rows = predict(inputs, model=str(random_ckpt), workers=0)
    assert [r["name"] for r in rows] == [inputs[0], "structure1", inputs[2], inputs[3], "structure4"]
    assert [bool(r["error"]) for r in rows] == [False, False, True, False, False]


def test_predict_with_worker_processes_keeps_order(tmp_path, random_ckpt):
    folder = tmp_path / "many"
    folder.mkdir()
    crystals = make_structures(10)
    paths = []
    for name, s in crystals:
        CifWriter(s).write_file(folder / f"{name}.cif")
        paths.append(str(folder / f"{name}.cif"))
    shuffled = [paths[i] for i in (7, 2, 9, 0, 5, 1, 8, 3, 6, 4)]
    in_process = predict(shuffled, model=str(random_ckpt), workers=0)
    spawned = predict(shuffled, model=str(random_ckpt), workers=2, batch_size=3)
    assert [r["name"] for r in spawned] == shuffled
    assert not any(r["error"] for r in spawned)
    np.testing.assert_allclose([r["rand"] for r in spawned], [r["rand"] for r in in_process], rtol=1e-5)
    by_name = dict(crystals)
    expected = _expected(random_ckpt, [by_name[Path(p).stem] for p in shuffled])
    np.testing.assert_allclose([r["rand"] for r in spawned], expected, rtol=1e-5)


def _run_script(folder: Path, text: str) -> subprocess.CompletedProcess:
    """Run ``text`` as a fresh Python script (MindSpore's graph compiler reads the main
    script's file, so ``python -c`` will not do)."""
    script = folder / "run.py"
    script.write_text(text)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GLOG_v": "3"})


def test_prediction_process_leaves_pymatgen_to_the_readers(files, random_ckpt, tmp_path):
    """The process running the models never imports pymatgen (0.5 s of start-up); the readers do."""
    folder, structures = files
    result = _run_script(tmp_path, (
        "import sys, crystalprop\n"
        "if __name__ == '__main__':\n"
        f"    rows = crystalprop.predict([{str(folder)!r}], model={str(random_ckpt)!r}, workers=1)\n"
        "    assert len(rows) == 4 and not any(r['error'] for r in rows), rows\n"
        "    print(sorted(m for m in sys.modules if m.split('.')[0] == 'pymatgen'))\n"
    ))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_models_sharing_a_network_give_their_own_predictions(tmp_path, random_ckpt):
    """Models of one configuration share a compiled network and take turns with their weights."""
    other = _random_checkpoint(tmp_path / "other.ckpt", "z", "eV", seed=7, log10=True)
    structures = [s for _, s in make_structures(5)]
    together = predict(structures, model=[str(random_ckpt), str(other)], batch_size=2)
    np.testing.assert_allclose([r["rand"] for r in together], _expected(random_ckpt, structures), rtol=1e-5)
    np.testing.assert_allclose([r["other"] for r in together], _expected(other, structures), rtol=1e-5)
    assert not np.allclose([r["rand"] for r in together], [r["other"] for r in together])


def test_cli_models_repeated_or_comma_separated(files, random_ckpt, tmp_path):
    """`-m a,b` is `-m a -m b`; a path that holds a comma is still one model."""
    other = _random_checkpoint(tmp_path / "other.ckpt", "z", "eV", seed=7, log10=True)
    third = _random_checkpoint(tmp_path / "third,v2.ckpt", "z", "eV", seed=8, log10=True)
    done = run_cli(["predict", "in/a.cif", "-m", f"{random_ckpt}, {other}", "-m", str(third), "-o", "out.csv"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {"rand", "other", "third,v2"} <= set(read_csv(tmp_path / "out.csv")[0])


@pytest.mark.parametrize("label", ["formula", "warning", "n_sites"])
def test_cli_refuses_a_model_named_like_a_fixed_column(files, random_ckpt, tmp_path, label):
    """Was: a model file called formula.ckpt wrote a second `formula` column over the formula (0.0 in the CSV),
    warning.ckpt lost its prediction in JSON Lines, and the screen table crashed with a traceback."""
    clash = tmp_path / f"{label}.ckpt"
    shutil.copy(random_ckpt, clash)
    done = run_cli(["predict", "in/a.cif", "-m", clash, "-o", "out.csv"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())
    assert str(clash) in said and f"'{label}'" in said and "rename" in said and "Traceback" not in said
    assert not (tmp_path / "out.csv").exists()


def test_a_run_folder_named_like_a_fixed_column_is_refused(random_ckpt, tmp_path):
    """`train -o runs/error` (a model of a DFT correction, say): its label is the folder's name, `error`."""
    from crystalprop.prediction.predictor import Predictor

    (tmp_path / "error").mkdir()
    shutil.copy(random_ckpt, tmp_path / "error" / "best.ckpt")
    with pytest.raises(ValueError, match=r"error.*'error'.*fixed column.*rename the folder"):
        Predictor(str(tmp_path / "error"))


def test_a_models_std_column_may_not_be_another_models_name():
    """An ensemble `x` writes `x_std`; a model called `x_std` beside it would write the same column."""
    from types import SimpleNamespace

    from crystalprop.prediction.predictor import check_column_clashes

    single, ensemble = SimpleNamespace(ensemble={}), SimpleNamespace(ensemble={"members": 2, "interval95": 2.5})
    check_column_clashes([("x", Path("x.ckpt"), ensemble), ("y_std", Path("y_std.ckpt"), single)])
    with pytest.raises(ValueError, match=r"x_std\.ckpt.*'x_std'.*x\.ckpt"):
        check_column_clashes([("x", Path("x.ckpt"), ensemble), ("x_std", Path("x_std.ckpt"), single)])
    with pytest.raises(ValueError, match=r"x_err95"):
        check_column_clashes([("x_err95", Path("x_err95.ckpt"), single), ("x", Path("x.ckpt"), ensemble)])


_RECORD_READER_START = (  # a script prelude: note whether MindSpore was loaded when reading started
    "import sys\n"
    "import crystalprop.prediction.predictor as predictor\n"
    "seen, start = [], predictor.ReadAhead.__init__\n"
    "def init(self, *args, **kwargs):\n"
    "    seen.append(('mindspore' in sys.modules, kwargs.get('workers')))\n"
    "    start(self, *args, **kwargs)\n"
    "predictor.ReadAhead.__init__ = init\n"
)


def test_cli_starts_reading_before_importing_mindspore(files, random_ckpt, tmp_path):
    """`predict` starts its readers before MindSpore's 1-2 s import, so the two overlap."""
    folder, _ = files
    result = _run_script(tmp_path, _RECORD_READER_START + (
        "from crystalprop.cli.commands import main\n"
        "if __name__ == '__main__':\n"
        "    try:\n"
        f"        main(['predict', {str(folder)!r}, '-m', {str(random_ckpt)!r}, '--workers', '1'])\n"
        "    except SystemExit as exc:\n"
        "        print('exit', exc.code, seen)\n"
    ))
    assert result.stdout.strip().splitlines()[-1] == "exit 0 [(False, 1)]", result.stdout[-2000:] + result.stderr[-2000:]


def test_api_starts_reading_before_importing_mindspore(files, random_ckpt, tmp_path):
    """`crystalprop.predict` on many files starts reader processes before MindSpore's import, as the CLI does."""
    folder, _ = files
    result = _run_script(tmp_path, _RECORD_READER_START + (
        "import crystalprop\n"
        "if __name__ == '__main__':\n"
        f"    rows = crystalprop.predict({str(folder)!r}, model={str(random_ckpt)!r})\n"
        "    assert len(rows) == 4 and not any(r['error'] for r in rows), rows\n"
        "    print(seen)\n"
    ))
    assert result.returncode == 0, result.stderr[-2000:]
    (mindspore_loaded, workers), = eval(result.stdout.strip().splitlines()[-1])
    assert not mindspore_loaded and workers > 0


def test_api_readers_do_not_rerun_an_unguarded_script(files, random_ckpt, tmp_path):
    """A script without an `if __name__ == "__main__"` guard runs once: the reader processes
    ('spawn') do not execute it again (they would otherwise redo its work, and fail to start)."""
    folder, _ = files
    runs = tmp_path / "runs.txt"
    result = _run_script(tmp_path, (
        "import crystalprop\n"
        f"open({str(runs)!r}, 'a').write('run\\n')\n"
        f"rows = crystalprop.predict({str(folder)!r}, model={str(random_ckpt)!r}, workers=2)\n"
        "assert len(rows) == 4 and not any(r['error'] for r in rows), rows\n"
        "print('ok')\n"
    ))
    assert result.returncode == 0, result.stderr[-2000:]
    assert runs.read_text() == "run\n"


def test_repeated_api_calls_reuse_the_loaded_models(tmp_path, random_ckpt, monkeypatch):
    """A second `crystalprop.predict` with the same models does not load them again, unless a file changed."""
    from crystalprop.prediction import predictor as predictor_module  # noqa: PLC0415

    ckpt = tmp_path / "m.ckpt"
    shutil.copy(random_ckpt, ckpt)
    built = []
    real = predictor_module.Predictor.__init__
    monkeypatch.setattr(predictor_module.Predictor, "__init__",
                        lambda self, *a, **k: (built.append(1), real(self, *a, **k))[1])
    structure = rocksalt(5.6)
    first = predict(structure, model=str(ckpt))
    started = time.perf_counter()
    second = predict(structure, model=str(ckpt))
    assert time.perf_counter() - started < 0.5
    assert len(built) == 1 and first[0]["m"] == second[0]["m"]
    _random_checkpoint(ckpt, "y", "eV", seed=11)  # new weights in the same file
    third = predict(structure, model=str(ckpt))
    assert len(built) == 2 and third[0]["m"] != first[0]["m"]
    # other weights of the same size copied over it with the old time kept (cp -p, rsync -a) were not seen
    stat = ckpt.stat()
    _random_checkpoint(ckpt, "y", "eV", seed=12)
    assert ckpt.stat().st_size == stat.st_size
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fourth = predict(structure, model=str(ckpt))
    assert len(built) == 3 and fourth[0]["m"] != third[0]["m"]


def test_elements_absent_from_training_are_named(random_ckpt):
    from crystalprop.prediction.predictor import Predictor  # noqa: PLC0415

    predictor = Predictor(str(random_ckpt))
    label = predictor.columns[0][0]
    predictor.known_elements[label] = {"Na", "O"}
    rows = [row for rows in predictor.iter_rows([perovskite(3.905)], workers=0) for row in rows]
    assert rows[0]["warning"] == f"{label}: element(s) Sr, Ti absent from its training data"


# --- predict on the command line ------------------------------------------------------------------


def test_cli_model_with_other_graph_settings_reads_with_them(files, tmp_path):
    """The readers start with the shipped settings; a model built on others gets its own graphs."""
    from crystalprop.graph import GraphSettings  # noqa: PLC0415
    from crystalprop.model.checkpoint import ModelCard, TargetTransform, save_checkpoint  # noqa: PLC0415
    from crystalprop.model.matformer import Matformer, ModelConfig  # noqa: PLC0415

    ms.set_seed(3)
    net = Matformer(ModelConfig(**TINY))
    settings = GraphSettings(cutoff=5.0, max_neighbors=4)  # first shell only (ties kept)
    ckpt = tmp_path / "near.ckpt"
    save_checkpoint(ckpt, net, ModelCard(target="y", unit="eV", model=net.config, graph=settings,
                                         transform=TargetTransform(mean=1.5, std=0.5)))
    folder, structures = files
    result = run_cli(["predict", folder, "-m", ckpt, "-o", tmp_path / "out.csv"])
    assert result.returncode == 0, result.stderr
    got = {Path(r["name"]).name: float(r["near"]) for r in read_csv(tmp_path / "out.csv")}
    names = sorted(structures)
    loaded, card = load_model(ckpt)
    own = card.transform.physical(predict_graphs(loaded, [_graph(structures[n], settings) for n in names]))
    default = card.transform.physical(predict_graphs(loaded, [_graph(structures[n]) for n in names]))
    np.testing.assert_allclose([got[n] for n in names], own, rtol=1e-5)
    assert not np.allclose(own, default, rtol=1e-5)


def test_cli_cell_as_given(files, random_ckpt, tmp_path):
    folder, structures = files
    for cell in ("as-given", "canonical"):
        done = run_cli(["predict", "in/a.cif", "-m", random_ckpt, "-o", f"{cell}.csv", "--cell", cell], cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        (row,) = read_csv(tmp_path / f"{cell}.csv")
        expected = _expected(random_ckpt, [structures["a.cif"]], GraphSettings(cell=cell))
        np.testing.assert_allclose(float(row["rand"]), expected, rtol=1e-5)
    wrong = run_cli(["predict", "in/a.cif", "-m", random_ckpt, "--cell", "primitive"], cwd=tmp_path)
    assert wrong.returncode == 2 and "primitive" in wrong.stderr


def test_cli_partial_failure_csv(files, random_ckpt, tmp_path):
    folder, structures = files
    done = run_cli(["predict", "in/a.cif", "in/b.vasp", "in/missing.cif", "-m", random_ckpt, "-o", "out.csv"],
                   cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "2 predicted, 1 failed" in done.stderr and "Traceback" not in done.stderr
    rows = read_csv(tmp_path / "out.csv")
    assert_columns(list(rows[0]))
    assert [r["name"] for r in rows] == ["in/a.cif", "in/b.vasp", "in/missing.cif"]
    assert [r["error"] != "" for r in rows] == [False, False, True]
    assert rows[2]["rand"] == "" and "no such file" in rows[2]["error"]
    np.testing.assert_allclose([float(r["rand"]) for r in rows[:2]],
                               _expected(random_ckpt, [structures["a.cif"], structures["b.vasp"]]), rtol=1e-5)
    # nothing but the output in the working directory: no rank_0/, kernel_meta/, *.ir, ...
    assert sorted(os.listdir(tmp_path)) == ["in", "out.csv", "out.csv.meta.json"]  # the sidecar: provenance
    assert sorted(os.listdir(tmp_path / "in")) == ["POSCAR_d", "a.cif", "b.vasp", "c.cif"]


def test_cli_all_succeed_json(files, random_ckpt, tmp_path):
    done = run_cli(["predict", "in", "-m", random_ckpt, "-o", "out.json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "out.json").read_text())["results"]  # the object also holds the provenance
    assert [r["name"] for r in rows] == ["in/POSCAR_d", "in/a.cif", "in/b.vasp", "in/c.cif"]  # folder: sorted
    for r in rows:
        assert_columns(list(r))
    assert all(r["error"] == "" and isinstance(r["rand"], float) for r in rows)
    assert sorted(os.listdir(tmp_path)) == ["in", "out.json"]


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_cli_rerun_over_a_folder_holding_its_results(files, random_ckpt, tmp_path, suffix):
    """Results written into the folder they came from are not read as structures the next time."""
    first = run_cli(["predict", "in", "-m", random_ckpt, "-o", f"in/out{suffix}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_cli(["predict", "in", "-m", random_ckpt, "-o", "again.csv"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "4 predicted, 0 failed" in again.stderr
    assert [r["name"] for r in read_csv(tmp_path / "again.csv")] == ["in/POSCAR_d", "in/a.cif", "in/b.vasp", "in/c.cif"]


def test_cli_refuses_existing_output(files, random_ckpt, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    refused = run_cli(["predict", "in/a.cif", "-m", random_ckpt, "-o", out], cwd=tmp_path)
    assert refused.returncode == 2
    assert "exists" in refused.stderr and "--resume" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert out.read_text() == "precious\n"


def test_cli_folders_without_structure_files_are_an_error(files, random_ckpt, tmp_path):
    """Folders that give no structure file (structures only in sub-folders without -r, other files only,
    nothing at all) are an error naming them and what they hold, and leave no output file; a structure
    found anywhere (with -r, or another argument) is predicted as before."""
    nest = tmp_path / "nest"
    (nest / "a").mkdir(parents=True)
    (nest / "b").mkdir()
    shutil.copy(files[0] / "a.cif", nest / "a" / "a.cif")
    for name in ("notes.txt", "run.log", "table.dat"):
        (nest / name).write_text("not a structure\n")
    (tmp_path / "text").mkdir()
    for name in ("notes.txt", "x.csv"):
        (tmp_path / "text" / name).write_text("not a structure\n")
    (tmp_path / "empty").mkdir()
    expected = {
        "nest": ["no structure files found in nest", "3 files not recognised as structures, e.g. notes.txt",
                 "2 sub-folders: use -r to read them"],
        "text": ["no structure files found in text (2 files not recognised as structures, e.g. notes.txt)"],
        "empty": ["no structure files found in empty (it is empty)"],
    }
    for folder, parts in expected.items():
        done = run_cli(["predict", folder, "-m", random_ckpt, "-o", "out.csv"], cwd=tmp_path)
        message = " ".join(done.stderr.split())
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert all(part in message for part in parts), message
        assert "predicted" not in message
        assert sorted(os.listdir(tmp_path)) == ["empty", "in", "nest", "text"]
    for args in (["nest", "-r"], ["empty", "in/a.cif"]):
        done = run_cli(["predict", *args, "-m", random_ckpt, "-o", "out.csv", "--overwrite"], cwd=tmp_path)
        assert done.returncode == 0 and "1 predicted, 0 failed" in done.stderr, done.stderr


def test_no_structures_found_counts_what_the_folders_hold(tmp_path):
    from crystalprop.io.discovery import no_structures_found

    (tmp_path / "nest" / "a" / "deeper").mkdir(parents=True)
    (tmp_path / "nest" / "a" / "deeper" / "x.txt").write_text("")
    (tmp_path / "nest" / "y.txt").write_text("")
    (tmp_path / "other").mkdir()
    nest, other = str(tmp_path / "nest"), str(tmp_path / "other")
    assert no_structures_found([nest, other], recursive=True) == (
        f"no structure files found in {nest}, {other} or their 2 sub-folders "
        f"(2 files not recognised as structures, e.g. y.txt)")
    assert no_structures_found([other]) == f"no structure files found in {other} (it is empty)"
    assert no_structures_found([str(tmp_path / "n*")]) == (
        f"no structure files found in {tmp_path}/n* (1 file not recognised as structures, e.g. y.txt; "
        f"1 sub-folder: use -r to read it)")
    (tmp_path / "nest" / "a" / "deeper" / "s.cif").write_text("")
    assert no_structures_found([nest], recursive=True) is None
    assert no_structures_found([str(tmp_path / "missing.cif")]) is None  # the reader reports it


def _killed_output(path: Path, ckpt: Path, inputs: list[str], n_done: int, cut: str = "") -> list[dict]:
    """An output file as a killed ``predict -o`` leaves it: ``n_done`` rows flushed, no end, maybe a cut line;
    with the provenance record that ``predict`` writes."""
    from crystalprop.prediction.output import ResultWriter
    from crystalprop.model.checkpoint import read_checkpoint
    from crystalprop.io.provenance import provenance

    rows = predict(inputs, model=str(ckpt), workers=0)
    for i, row in enumerate(rows):
        row["rand"] = 1000.0 + i  # recognisable: rows kept by --resume are not recomputed
    record = provenance([("rand", ckpt)], cell=read_checkpoint(ckpt)[0].graph.cell, shard=(1, 1))
    writer = ResultWriter(path, list(rows[0]), overwrite=True, provenance=record)
    writer.write(rows[:n_done])
    writer.handle.close()  # killed: no closing bracket
    writer._lock.release()  # which the kernel releases
    with open(path, "a") as handle:
        handle.write(cut)
    return rows


def test_cli_resume_truncated_json(files, random_ckpt, tmp_path, monkeypatch):
    inputs = ["in/a.cif", "in/b.vasp", "in/c.cif", "in/POSCAR_d"]
    out = tmp_path / "out.json"
    monkeypatch.chdir(tmp_path)
    _killed_output(out, random_ckpt, inputs, 2, cut=',\n{"name": "in/c.cif", "sour')
    assert not out.read_text().rstrip().endswith("]")
    done = run_cli(["predict", *inputs, "-m", random_ckpt, "-o", out, "--resume"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 predicted" in done.stderr
    rows = json.loads(out.read_text())["results"]
    assert [r["name"] for r in rows] == inputs
    assert [r["rand"] for r in rows[:2]] == [1000.0, 1001.0]  # kept, not recomputed
    np.testing.assert_allclose([r["rand"] for r in rows[2:]],
                               _expected(random_ckpt, [files[1]["c.cif"], files[1]["POSCAR_d"]]), rtol=1e-5)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_cli_resume_csv_and_jsonl(files, random_ckpt, tmp_path, suffix, monkeypatch):
    inputs = ["in/a.cif", "in/b.vasp", "in/c.cif"]
    out = tmp_path / f"out{suffix}"
    monkeypatch.chdir(tmp_path)
    _killed_output(out, random_ckpt, inputs, 1)  # killed between two batches
    done = run_cli(["predict", *inputs, "-m", random_ckpt, "-o", out, "--resume"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    if suffix == ".csv":
        assert_columns(list(rows[0]))
    assert sorted(r["name"] for r in rows) == inputs
    assert float(rows[0]["rand"]) == 1000.0
    np.testing.assert_allclose([float(r["rand"]) for r in rows[1:]],
                               _expected(random_ckpt, [files[1]["b.vasp"], files[1]["c.cif"]]), rtol=1e-5)


def test_cli_resume_of_a_finished_file_says_so(files, random_ckpt, tmp_path, monkeypatch):
    """`--resume` of a file that already holds every structure printed an empty table and "0 predicted"."""
    inputs = ["in/a.cif", "in/b.vasp", "in/c.cif"]
    monkeypatch.chdir(tmp_path)
    assert run_cli(["predict", *inputs, "-m", random_ckpt, "-o", "out.csv"], cwd=tmp_path).returncode == 0
    again = run_cli(["predict", *inputs, "-m", random_ckpt, "-o", "out.csv", "--resume"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    shown = again.stdout + again.stderr
    assert "structure" not in shown  # no table header over no rows
    assert "0 predicted, 0 failed; 3 already in out.csv" in shown
    assert len(read_rows(tmp_path / "out.csv")) == 3


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_cli_resume_after_a_row_cut_mid_write(files, random_ckpt, tmp_path, suffix, monkeypatch):
    inputs = ["in/a.cif", "in/b.vasp", "in/c.cif"]
    out = tmp_path / f"out{suffix}"
    monkeypatch.chdir(tmp_path)
    rows = _killed_output(out, random_ckpt, inputs, 1)
    whole = out.read_text()
    text = ",".join(str(v) for v in rows[1].values()) if suffix == ".csv" else json.dumps(rows[1])
    partial = text[: text.index("in/b.vasp") + len("in/b.vasp") + 3]  # cut just after the name
    out.write_text(whole + partial)  # the second row cut half-way
    done = run_cli(["predict", *inputs, "-m", random_ckpt, "-o", out, "--resume"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = read_rows(out, strict=True)  # the cut row is gone
    assert sorted(r["name"] for r in got) == inputs
    assert all(r["rand"] not in ("", None) and r["formula"] for r in got)


def _default_stop_signals() -> None:
    """In the child, before exec: the stop signals as a terminal leaves them (a shell's background job
    started pytest with SIGINT ignored, and a child inherits that)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "workers"), [(signal.SIGINT, "1"), (signal.SIGINT, "0"), (signal.SIGTERM, "1"),
                                              (signal.SIGTERM, "0"), (signal.SIGHUP, "1")])
def test_cli_stopped_by_a_signal_keeps_a_valid_file_and_says_so(files, random_ckpt, tmp_path, sig, workers):
    """Ctrl-C, SIGTERM (a cluster's time limit, `kill`) or SIGHUP while an input is being read: the rows so
    far are in a valid JSON file, nothing is counted as failed, the exit status is 128 + the signal's number,
    and --resume finishes the run."""
    inputs = ["in/a.cif", "in/b.vasp", "slow.cif"]
    os.mkfifo(tmp_path / "slow.cif")  # reading it waits for a writer that never comes: a slow input
    out = tmp_path / "out.json"
    proc = subprocess.Popen(CLI + ["predict", *inputs, "-m", str(random_ckpt), "-o", "out.json", "--batch-size", "1",
                                   "--workers", workers], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_stop_signals)
    deadline = time.monotonic() + 120
    while '"name": "in/b.vasp"' not in (out.read_text() if out.is_file() else ""):  # its row (the record names it too)
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    message = " ".join(stderr.split())
    assert proc.returncode == 128 + sig and "Traceback" not in stderr, stderr
    assert "2 predicted, 0 failed, interrupted" in message, message
    assert [r["name"] for r in json.loads(out.read_text())["results"]] == inputs[:2]
    assert not is_finished(out)  # so that `merge` refuses it
    (tmp_path / "slow.cif").unlink()
    shutil.copy(files[0] / "c.cif", tmp_path / "slow.cif")
    resumed = run_cli(["predict", *inputs, "-m", random_ckpt, "-o", "out.json", "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0 and "1 predicted, 0 failed" in resumed.stderr, resumed.stderr
    assert [r["name"] for r in json.loads(out.read_text())["results"]] == inputs
    assert is_finished(out)


def test_cli_gpu_fails_fast_and_clearly(files, random_ckpt, tmp_path):
    started = time.monotonic()
    done = run_cli(["predict", "in/a.cif", "-m", random_ckpt, "--device", "GPU"], cwd=tmp_path, timeout=120)
    assert time.monotonic() - started < 60
    assert done.returncode == 2
    assert "GPU" in done.stderr and "--device CPU" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_compile_cache_is_keyed_on_the_model(files, random_ckpt, tmp_path):
    """Two model sizes through the CLI with one cache folder: each must compute its own network."""
    folder, structures = files
    set_device("CPU")
    big = _random_checkpoint(tmp_path / "big.ckpt", "y", "eV", seed=5)
    # same file name stem, other architecture
    from crystalprop.model.checkpoint import ModelCard, TargetTransform, save_checkpoint
    from crystalprop.model.matformer import Matformer, ModelConfig

    ms.set_seed(6)
    net = Matformer(ModelConfig(layers=2, features=16, heads=1, fc_features=16))
    save_checkpoint(big, net, ModelCard(target="y", model=net.config, transform=TargetTransform(1.0, 2.0)))
    inputs = ["in/a.cif", "in/c.cif"]
    expected = {}
    for ckpt in (random_ckpt, big):
        expected[ckpt] = _expected(ckpt, [structures["a.cif"], structures["c.cif"]])
    out = tmp_path / "out.csv"
    for ckpt in (random_ckpt, big):
        done = run_cli(["predict", *inputs, "-m", ckpt, "-o", out, "--overwrite"], cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        rows = read_csv(out)  # --overwrite: the second run replaced the first one's rows
        assert [r["name"] for r in rows] == inputs and ckpt.stem in rows[0]
        np.testing.assert_allclose([float(r[ckpt.stem]) for r in rows], expected[ckpt], rtol=1e-5)


# --- inspect and models --------------------------------------------------------------------------


def test_cli_inspect_json(files, tmp_path):
    done = run_cli(["inspect", "in/a.cif", "in/b.vasp", "in/missing.cif", "--json"], cwd=tmp_path)
    assert done.returncode == 1  # one unreadable file
    records = json.loads(done.stdout)
    assert [r["name"] for r in records] == ["in/a.cif", "in/b.vasp", "in/missing.cif"]
    nacl = records[0]
    assert nacl["formula"] == "NaCl" and nacl["n_sites"] == 8
    assert (nacl["cell"], nacl["cell_sites"]) == ("canonical", 2)  # the conventional cell -> the primitive
    assert nacl["nearest_neighbor_A"] == pytest.approx(2.82, abs=1e-3)
    assert nacl["n_edges"] > 0 and nacl["edges_per_atom"] == pytest.approx(nacl["n_edges"] / 2, abs=0.01)
    assert records[1]["nearest_neighbor_A"] == pytest.approx(4.21 / 2, abs=1e-3)
    assert records[2]["error"] and set(records[2]) == set(nacl)  # was: the graph's keys were left out
    assert all(records[2][key] is None for key in ("n_edges", "edges_per_atom", "nearest_neighbor_A",
                                                   "mean_neighbor_A"))
    assert all(records[2][key] is None for key in ("formula", "n_sites", "cell_sites"))  # was "", 0, 0 (hunt15 10)
    table = run_cli(["inspect", "in/missing.cif"], cwd=tmp_path, env={"COLUMNS": "200"})
    assert "no such file" in table.stdout and "None" not in table.stdout
    ok = run_cli(["inspect", "in/c.cif", "--json", "--cutoff", "5", "--neighbors", "6"], cwd=tmp_path)
    assert ok.returncode == 0
    assert json.loads(ok.stdout)[0]["nearest_neighbor_A"] == pytest.approx(3.905 / 2, abs=1e-3)


def test_cli_inspect_of_a_folder_without_structures_says_so(tmp_path):
    """`inspect` of an empty folder printed an empty table and exited 0; it now says what predict says."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("notes")
    for folder, held in (("empty", "it is empty"), ("junk", "1 file not recognised as structures")):
        for extra in ([], ["--json"]):
            done = run_cli(["inspect", folder, *extra], cwd=tmp_path)
            assert done.returncode == 2 and "no structure files found" in done.stdout + done.stderr
            assert held in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_cli_inspect_shows_the_cell_used(files, tmp_path):
    table = run_cli(["inspect", "in/a.cif", "in/c.cif"], cwd=tmp_path, env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "file -> canonical cell" in table.stdout
    assert "8 -> 2" in table.stdout and "5 -> 5" in table.stdout
    given = run_cli(["inspect", "in/a.cif", "--json", "--cell", "as-given"], cwd=tmp_path)
    (record,) = json.loads(given.stdout)
    assert (record["cell"], record["n_sites"], record["cell_sites"]) == ("as-given", 8, 8)
    assert record["edges_per_atom"] == pytest.approx(record["n_edges"] / 8, abs=0.01)


def test_cli_models_lists_checkpoints(shipped_dir, random_ckpt, files, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    shutil.copytree(shipped_dir, folder)
    shutil.copy(random_ckpt, folder / "my_model.ckpt")
    env = {"CRYSTALPROP_CHECKPOINTS": str(folder), "COLUMNS": "200"}
    done = run_cli(["models"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    shipped = next(i for i, line in enumerate(lines) if "formation_energy " in line)
    mine = next(i for i, line in enumerate(lines) if "my_model" in line)
    assert shipped < mine
    assert "eV/atom" in lines[shipped] and "0.1230" in lines[shipped] and "40 crystals" in lines[shipped]
    # a shipped name works as a model, and no model means every shipped model
    monkeypatch.setenv("CRYSTALPROP_CHECKPOINTS", str(folder))
    rows = predict(str(files[0] / "a.cif"))
    assert rows[0]["formation_energy"] is not None and rows[0]["my_model"] is not None
    named = predict(str(files[0] / "a.cif"), model="formation_energy")
    assert named[0]["formation_energy"] == pytest.approx(rows[0]["formation_energy"])
    assert "my_model" not in named[0]


_BLAS_PROBE = (
    "import ctypes, os, sys\n"
    "from crystalprop.cli.commands import main\n"
    "try:\n"
    "    main(['predict', 'a.cif', '-m', sys.argv[1]])\n"
    "except SystemExit:\n"
    "    pass\n"
    "threads = None\n"
    "for path in dict.fromkeys(line.split()[-1] for line in open('/proc/self/maps') if 'openblas' in line):\n"
    "    library = ctypes.CDLL(path)\n"
    "    for name in ('openblas_get_num_threads64_', 'openblas_get_num_threads'):\n"
    "        if threads is None and hasattr(library, name):\n"
    "            threads = getattr(library, name)()\n"
    "print('blas', os.environ.get('OPENBLAS_NUM_THREADS'), threads)\n"
)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the loaded libraries from /proc")
@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("2", "2")])
def test_cli_predict_keeps_numpy_blas_on_one_thread_unless_told(tmp_path, random_ckpt, given, expected):
    """The readers take the other cores: a BLAS thread pool in the predicting process only contended
    (a quarter of its CPU time in the system on 2 cores). A user's own OPENBLAS_NUM_THREADS is kept."""
    CifWriter(rocksalt(5.64)).write_file(tmp_path / "a.cif")
    (tmp_path / "probe.py").write_text(_BLAS_PROBE)
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given:
        env["OPENBLAS_NUM_THREADS"] = given
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "probe.py", str(random_ckpt)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    words = done.stdout.split()
    assert words[-3:-1] == ["blas", expected], done.stdout + done.stderr[-2000:]
    if words[-1] != "None":  # numpy's OpenBLAS answered: the setting reached it
        assert words[-1] == expected


@pytest.mark.parametrize(("args", "said"), [
    (["predict", "--batch-size", "0"], "'--batch-size'"), (["predict", "--batch-size", "-5"], "'--batch-size'"),
    (["predict", "--workers", "-1"], "'--workers'"), (["predict", "--timeout", "-1"], "'--timeout'"),
    (["predict", "-m", ""], "empty model name"), (["predict", "--resume", "--overwrite", "-o", "x.csv"], "give one"),
    (["predict", "--resume"], "--resume continues an --output file"),  # was ignored, exit status 0
    (["inspect", "--neighbors", "0"], "'--neighbors'"), (["inspect", "--cutoff", "-1"], "'--cutoff'"),
    (["inspect", "--cutoff", "0"], "'--cutoff'"), (["inspect", "--cutoff", "nan"], "not a finite number"),
    (["inspect", "--cutoff", "inf"], "not a finite number"), (["predict", "--timeout", "nan"], "not a finite number"),
])
def test_cli_refuses_impossible_option_values(args, said, files, tmp_path):
    """These ran as if sensible (--neighbors 0 gave 122 edges per atom; -m '' ran every model)."""
    folder, _ = files
    done = run_cli(args[:1] + [folder] + args[1:], cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert said in done.stderr, done.stderr


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_a_file_name_that_is_not_utf8_is_written_escaped_and_resumes(random_ckpt, tmp_path, suffix):
    """A file named with bytes that are not UTF-8 (b'bad\\xff.cif') crashed the CSV writer with a
    UnicodeEncodeError that lost its whole batch (hunt7 finding 6). Its name is written with the bytes
    escaped (bad\\xff.cif), in every format, and --resume knows it as done."""
    folder = tmp_path / "names"
    folder.mkdir()
    for name, structure in make_structures(2):
        CifWriter(structure).write_file(folder / f"{name}.cif")
    with open(os.path.join(os.fsencode(folder), b"bad\xff.cif"), "w") as handle:
        handle.write(str(CifWriter(rocksalt(5.64))))
    out = tmp_path / f"out{suffix}"
    first = subprocess.run(CLI + ["predict", str(folder), "-m", str(random_ckpt), "-o", str(out)], capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr[-2000:]
    rows = read_rows(out)
    assert len(rows) == 3 and any(row["name"].endswith("bad\\xff.cif") for row in rows)
    out.read_bytes().decode("utf-8")  # the file is UTF-8
    again = subprocess.run(CLI + ["predict", str(folder), "-m", str(random_ckpt), "-o", str(out), "--resume"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 predicted" in again.stderr, again.stderr[-2000:]
    assert len(read_rows(out)) == 3


def test_inspect_json_names_a_file_that_is_not_utf8_in_valid_utf8(tmp_path):
    """inspect --json wrote the raw bytes of such a name: invalid UTF-8 that json.load refused (hunt7 finding 6)."""
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff.cif"), "w") as handle:
        handle.write(str(CifWriter(rocksalt(5.64))))
    done = subprocess.run(CLI + ["inspect", "--json", str(tmp_path)], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = json.loads(done.stdout.decode("utf-8"))
    assert record["name"].endswith("bad\\xff.cif")


def test_a_broken_link_to_a_name_that_is_not_utf8_is_a_failed_row(random_ckpt, tmp_path):
    """Its reason ('broken link -> ...') carried the target's raw bytes, and the CSV writer lost the batch."""
    folder = tmp_path / "links"
    folder.mkdir()
    CifWriter(rocksalt(5.64)).write_file(folder / "a.cif")
    os.symlink(b"/nonexistent/bad\xff.cif", os.path.join(os.fsencode(folder), b"gone.cif"))
    done = subprocess.run(CLI + ["predict", str(folder), "-m", str(random_ckpt), "-o", str(tmp_path / "out.csv")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    rows = read_rows(tmp_path / "out.csv")
    assert [row["name"].rsplit("/", 1)[-1] for row in rows] == ["a.cif", "gone.cif"]
    assert "bad\\xff.cif" in rows[1]["error"]


def test_an_output_that_is_one_of_the_inputs_is_refused_before_anything_is_written(tmp_path, random_ckpt):
    """Was (hunt15 2): `predict data.json -o data.json --overwrite` emptied the input before reading it, so the
    user's data was lost and nothing predicted; a folder's structure file named as -o went the same way."""
    structures = make_structures(2)
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": name, "structure": s.as_dict()} for name, s in structures]))
    before = data.read_bytes()
    for extra in (["--overwrite"], ["--resume"]):
        done = run_cli(["predict", "data.json", "-m", random_ckpt, "-o", "data.json", *extra], cwd=tmp_path)
        said = " ".join(done.stderr.split())
        assert done.returncode == 2 and "data.json" in said and "one of the inputs" in said, done.stderr
        assert data.read_bytes() == before
    folder = tmp_path / "in"
    folder.mkdir()
    structures[0][1].to(filename=str(folder / "a.cif"))
    (folder / "b.json").write_text(json.dumps(structures[1][1].as_dict()))
    kept = (folder / "b.json").read_bytes()
    done = run_cli(["predict", "in", "-m", random_ckpt, "-o", "in/b.json", "--overwrite"], cwd=tmp_path)
    assert done.returncode == 2 and "one of the inputs" in done.stderr, done.stderr
    assert (folder / "b.json").read_bytes() == kept
    fine = run_cli(["predict", "in", "-m", random_ckpt, "-o", "in/results.json"], cwd=tmp_path)
    assert fine.returncode == 0, fine.stderr  # a new file in the folder: the scan leaves crystalprop's results out
    again = run_cli(["predict", "in", "-m", random_ckpt, "-o", "in/results.json", "--overwrite"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_in_memory_structures_are_named_by_the_id_they_carry(files, random_ckpt):
    """Structures from a database list were all named structure<N>, their ids (a pymatgen Structure's properties, an
    ase.Atoms' info, as Materials Project and ASE databases fill them) ignored: rows matched back by position only
    (hunt16 7)."""
    from ase import Atoms  # noqa: PLC0415

    _, structures = files
    tagged = structures["c.cif"].copy(properties={"material_id": "mp-5229"})
    atoms = Atoms("Na2", cell=np.eye(3) * 4.0, positions=[[0, 0, 0], [2, 2, 2]], pbc=True, info={"name": "bcc-Na"})
    numbered = Atoms("Na2", cell=np.eye(3) * 4.0, positions=[[0, 0, 0], [2, 2, 2]], pbc=True, info={"id": np.int64(7)})
    rows = predict([tagged, atoms, structures["b.vasp"], numbered], model=str(random_ckpt), workers=0)
    assert [r["name"] for r in rows] == ["mp-5229", "bcc-Na", "structure2", "7"]
