"""scripts/gap_ranges.py (a band-gap evaluation's error on metals, gapped materials and 0-1 eV apart) and
scripts/interval_crossfit.py (the 95 % interval cross-fitted on an evaluation's predictions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_each_range_counts_its_own_structures(tmp_path):
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("id,true,predicted,error\n"
                           "a,0.0,0.0,0.0\n"     # metal at its label
                           "b,0.0,0.4,0.4\n"     # metal predicted gapped
                           "c,0.5,0.9,0.4\n"     # small gap over-predicted
                           "d,1.0,0.8,-0.2\n"    # 1 eV: in (0, 1]
                           "e,3.0,2.0,-1.0\n")   # wide gap
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gap_ranges.py"), str(predictions)],
                          capture_output=True, text=True, check=True)
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert "n =     5  MAE 0.4000  mean signed error -0.0800" in lines["all"]
    assert "n =     2  MAE 0.2000  mean signed error +0.2000" in lines["metals"]
    assert "n =     3  MAE 0.5333  mean signed error -0.2667" in lines["gapped"]
    assert "n =     2  MAE 0.3000  mean signed error +0.1000" in lines["0-1"]


def test_the_evaluation_scripts_explain_themselves(tmp_path):
    for script in ("gap_ranges.py", "interval_crossfit.py"):
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "predictions.csv" in done.stdout, script
        assert not (tmp_path / "--help").exists()


def test_interval_crossfit_leaves_out_structures_without_sigma(tmp_path):
    """evaluate leaves std and err95 empty for a structure with an element the model lacks; the script
    read them as numbers and failed on the first."""
    rng = np.random.default_rng(0)
    std = rng.uniform(0.1, 1.0, 400)
    error = rng.normal(0, std)
    predictions = tmp_path / "predictions.csv"
    rows = [f"s{k},0,{e:.6g},{e:.6g},{s:.6g}" for k, (e, s) in enumerate(zip(error, std))]
    predictions.write_text("id,true,predicted,error,std\n" + "\n".join(rows + ["po,0,5.0,5.0,"]) + "\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "interval_crossfit.py"), str(predictions)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "n 400 with σ (1 without)" in done.stdout


def test_sigma_floor_script_recovers_gaussian_coverage_and_shows_what_a_floor_costs(tmp_path):
    """scripts/sigma_floor.py: errors drawn from N(0, σ) with σ spread over a factor of 10 are covered 68 / 95 % by
    σ itself (c = 0); a floor under σ blurs what it says per structure, so 2σ then covers fewer."""
    rng = np.random.default_rng(3)
    std = rng.uniform(0.1, 1.0, 4000)
    errors = rng.normal(0.0, std)
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("id,true,predicted,error,std\n" + "".join(
        f"s{k},0,{e:.6f},{e:.6f},{s:.6f}\n" for k, (e, s) in enumerate(zip(errors, std))))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "sigma_floor.py"), str(predictions)],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    within = {line.split("×")[0].strip(): [float(x) for x in line.replace("%", "").split()[-5::4]]
              for line in done.stdout.splitlines()[1:]}
    assert abs(within["c = 0"][0] - 68.3) < 2 and abs(within["c = 0"][1] - 95.4) < 1.5
    assert within["c = 4"][1] < within["c = 0"][1] - 1


def test_interval_crossfit_says_when_no_multiple_of_sigma_holds_95_percent(tmp_path):
    """A σ of 0 under more than 5 % of a half's errors (metals both members floor at 0, one of them wrong)
    made the script stop with a TypeError (hunt12 3); output without σ, with a KeyError."""
    rows = [f"m{k},0,0,0,0" for k in range(12)] + [f"w{k},0.5,0,-0.5,0" for k in range(3)]
    rows += [f"g{k},1,{1 + 0.01 * k:.3f},{0.01 * k:.3f},0.05" for k in range(10)]
    (tmp_path / "zero.csv").write_text("id,true,predicted,error,std\n" + "\n".join(rows) + "\n")
    (tmp_path / "plain.csv").write_text("id,true,predicted,error\ns0,1,1.1,0.1\n")
    (tmp_path / "none.csv").write_text("id,true,predicted,error,std\ns0,1,1.1,0.1,\n")  # no structure with a σ
    (tmp_path / "empty.csv").write_text("id,true,predicted,error,std\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "interval_crossfit.py")]
                          + [str(tmp_path / f"{name}.csv") for name in ("zero", "plain", "none", "empty")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "no multiple of σ holds 95 % of them" in done.stdout and "no std column" in done.stdout
    assert done.stdout.count("too few to cross-fit") == 2, done.stdout
