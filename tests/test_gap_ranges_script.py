"""scripts/gap_ranges.py: a band-gap evaluation's error on metals, gapped materials and 0-1 eV apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
