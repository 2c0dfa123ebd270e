"""Sharded prediction (`predict --shard I/N`) and `crystalprop merge` give the unsharded table."""

from __future__ import annotations

import pytest

from conftest import make_structures, read_csv, run_cli


def test_three_shards_merge_to_the_unsharded_result(tmp_path, random_ckpt):
    folder = tmp_path / "structures"
    folder.mkdir()
    for name, structure in make_structures(10):
        structure.to(filename=str(folder / f"{name}.cif"))
    (folder / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    whole = run_cli(["predict", folder, "-m", random_ckpt, "-o", tmp_path / "all.csv", "--workers", "0"])
    assert whole.returncode == 1, whole.stderr  # the broken file is a partial failure
    parts = []
    for i in (1, 2, 3):
        out = tmp_path / f"part{i}.csv"
        run_cli(["predict", folder, "-m", random_ckpt, "-o", out, "--shard", f"{i}/3", "--workers", "0"])
        parts.append(out)
    sizes = [len(read_csv(p)) for p in parts]
    assert sizes == [4, 4, 3]
    missing = run_cli(["merge", tmp_path / "two.csv", parts[0], parts[2]])
    assert missing.returncode == 2 and "2/3" in missing.stderr and not (tmp_path / "two.csv").exists()
    merged = run_cli(["merge", tmp_path / "merged.csv", *parts])
    assert merged.returncode == 0, merged.stderr
    expected, got = read_csv(tmp_path / "all.csv"), read_csv(tmp_path / "merged.csv")
    assert [r["name"] for r in got] == [r["name"] for r in expected]
    for a, b in zip(got, expected):
        assert a["error"] == b["error"]
        if b["rand"]:  # batches differ between shards: equal to float32 precision
            assert abs(float(a["rand"]) - float(b["rand"])) <= 1e-5 * max(1.0, abs(float(b["rand"])))


def test_merge_refuses_duplicates_and_bad_shard(tmp_path, random_ckpt):
    folder = tmp_path / "s"
    folder.mkdir()
    for name, structure in make_structures(2):
        structure.to(filename=str(folder / f"{name}.cif"))
    out = tmp_path / "a.csv"
    run_cli(["predict", folder, "-m", random_ckpt, "-o", out, "--workers", "0"])
    dup = run_cli(["merge", tmp_path / "m.csv", out, out])
    assert dup.returncode == 2 and "more than one file" in dup.stderr
    bad = run_cli(["predict", folder, "-m", random_ckpt, "--shard", "4/3"])
    assert bad.returncode == 2 and "--shard" in bad.stderr


def test_merging_parts_without_provenance_says_they_were_not_checked(tmp_path):
    from crystalprop.prediction.output import ResultWriter  # noqa: PLC0415

    parts = []
    for i, name in enumerate(("a.cif", "b.cif")):
        part = tmp_path / f"p{i}.csv"
        writer = ResultWriter(part, ["index", "name", "rand", "error", "warning"])
        writer.write([{"index": i, "name": name, "rand": 1.0 + i, "error": "", "warning": ""}])
        writer.close()
        parts.append(part)
    merged = run_cli(["merge", tmp_path / "all.csv", *parts])
    assert merged.returncode == 0, merged.stderr
    assert "2 rows" in merged.stderr and "not checked" in merged.stderr


def test_merge_refuses_shards_predicted_over_other_inputs(tmp_path, random_ckpt):
    """Was: `predict A --shard 1/2` and `predict B --shard 2/2` merged into one "complete" table."""
    structures = make_structures(4)
    for folder, chosen in (("A", structures[:2]), ("B", structures[2:])):
        (tmp_path / folder).mkdir()
        for name, structure in chosen:
            structure.to(filename=str(tmp_path / folder / f"{name}.cif"))
    for i, folder in ((1, "A"), (2, "B")):
        done = run_cli(["predict", folder, "-m", random_ckpt, "-o", f"{folder}{i}.csv", "--shard", f"{i}/2",
                        "--workers", "0"], cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    mixed = run_cli(["merge", "all.csv", "A1.csv", "B2.csv"], cwd=tmp_path)
    said = " ".join(mixed.stderr.split())
    assert mixed.returncode == 2 and "A1.csv" in said and "B2.csv" in said, mixed.stderr
    assert str(tmp_path / "A") in said and str(tmp_path / "B") in said
    assert not (tmp_path / "all.csv").exists()


def test_merge_refuses_shards_of_a_folder_that_changed_between_them(tmp_path, random_ckpt):
    """Shards deal out positions in the folder's listing: a file added between two shard runs shifted
    them, so one structure was predicted twice and another never, and merge said the whole was complete."""
    structures = make_structures(5)
    (tmp_path / "in").mkdir()
    for name, structure in structures[:4]:
        structure.to(filename=str(tmp_path / "in" / f"{name}.cif"))
    first = run_cli(["predict", "in", "-m", random_ckpt, "-o", "p1.csv", "--shard", "1/2", "--workers", "0"],
                    cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    name, structure = structures[4]
    structure.to(filename=str(tmp_path / "in" / f"{name}.cif"))
    second = run_cli(["predict", "in", "-m", random_ckpt, "-o", "p2.csv", "--shard", "2/2", "--workers", "0"],
                     cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    merged = run_cli(["merge", "all.csv", "p1.csv", "p2.csv"], cwd=tmp_path)
    said = " ".join(merged.stderr.split())
    assert merged.returncode == 2 and "4 files" in said and "5 files" in said, merged.stderr
    assert not (tmp_path / "all.csv").exists()


def test_merge_names_a_part_of_another_kind_and_duplicates_within_one_file(tmp_path):
    """merge OUT part.cif said the part was an 'output' that must end in .csv; one file holding a structure
    twice (two --resume runs at once, before outputs were locked) was 'in more than one file' (hunt7 nits)."""
    from crystalprop.prediction.output import ResultWriter, merge_results

    (tmp_path / "x.cif").write_text("data_x\n")
    with pytest.raises(ValueError, match=r"x.cif: a part \(a result file of predict -o\) must end in"):
        merge_results(tmp_path / "all.csv", [tmp_path / "x.cif"])
    writer = ResultWriter(tmp_path / "twice.csv", ["index", "name", "error"])
    writer.write([{"index": 0, "name": "a.cif", "error": ""}, {"index": 0, "name": "a.cif", "error": ""}])
    writer.close()
    with pytest.raises(ValueError, match="appear more than once in"):
        merge_results(tmp_path / "all.csv", [tmp_path / "twice.csv"])


def test_merge_refuses_whole_results_of_other_inputs(tmp_path, random_ckpt):
    """Was (hunt13 3): the results of `predict A` and `predict B`, neither sharded, were merged by their
    positions, A's and B's rows interleaved, into a file whose record named A's inputs only."""
    structures = make_structures(4)
    for folder, chosen in (("A", structures[:2]), ("B", structures[2:])):
        (tmp_path / folder).mkdir()
        for name, structure in chosen:
            structure.to(filename=str(tmp_path / folder / f"{name}.cif"))
        done = run_cli(["predict", folder, "-m", random_ckpt, "-o", f"{folder}.csv", "--workers", "0"], cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    mixed = run_cli(["merge", "all.csv", "A.csv", "B.csv"], cwd=tmp_path)
    said = " ".join(mixed.stderr.split())
    assert mixed.returncode == 2 and "A.csv" in said and "B.csv" in said, mixed.stderr
    assert "crystalprop predict" in said  # the way to one table: predict both inputs in one run
    assert not (tmp_path / "all.csv").exists()


def test_merge_refuses_a_finished_part_that_lost_whole_rows(tmp_path, random_ckpt):
    """Was (hunt15 5): a shard whose CSV lost whole rows (a partial copy, a hand edit), its record still saying
    it finished, merged into a table short of them with status 0: every position of a shard is counted now."""
    folder = tmp_path / "structures"
    folder.mkdir()
    for name, structure in make_structures(9):
        structure.to(filename=str(folder / f"{name}.cif"))
    parts = []
    for i in (1, 2, 3):
        out = tmp_path / f"part{i}.csv"
        done = run_cli(["predict", folder, "-m", random_ckpt, "-o", out, "--shard", f"{i}/3", "--workers", "0"])
        assert done.returncode == 0, done.stderr
        parts.append(out)
    lines = parts[1].read_text().splitlines(keepends=True)
    parts[1].write_text("".join(lines[:-1]))  # its last row gone, at a line boundary
    merged = run_cli(["merge", tmp_path / "all.csv", *parts])
    said = " ".join(merged.stderr.split())
    assert merged.returncode == 2 and "part2.csv" in said and "1 of its 3" in said, merged.stderr
    assert "--resume" in said and not (tmp_path / "all.csv").exists()


def test_merge_names_a_table_that_is_not_a_result_of_predict(tmp_path):
    """merge of an evaluate predictions.csv (319 rows: id, true, predicted, ...) said 'no rows in the given files'
    (hunt17 14): it has rows, of another kind."""
    from crystalprop.prediction.output import merge_results

    (tmp_path / "predictions.csv").write_text("id,true,predicted,error\nmp-1,0.1,0.2,0.1\nmp-2,0.3,0.2,-0.1\n")
    with pytest.raises(ValueError, match=r"predictions.csv: not a result file of predict \(its columns: id, true"):
        merge_results(tmp_path / "all.csv", [tmp_path / "predictions.csv"])
