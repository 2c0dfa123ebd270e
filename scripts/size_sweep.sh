#!/usr/bin/env bash
# Accuracy per CPU-hour of a few Matformer sizes on a subset of mp2018 (formation energy):
# the same short schedule for each, validation MAE and wall time from each run's history.csv.
#
#   scripts/size_sweep.sh [DATA] [OUT] [LIMIT] [EPOCHS]
#   (defaults: ../shared/data/mp2018 runs/sweep 4000 3)
set -euo pipefail
DATA=${1:-../shared/data/mp2018}
OUT=${2:-runs/sweep}
LIMIT=${3:-4000}
EPOCHS=${4:-3}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
#        name        layers features heads
for spec in "L5-F64-H1 5 64 1" "L3-F64-H1 3 64 1" "L5-F128-H1 5 128 1" "L5-F64-H2 5 64 2"; do
    read -r name layers features heads <<<"$spec"
    [ -f "$OUT/$name/history.csv" ] && continue
    "$PY" -m crystalprop train "$DATA" -t formation_energy_per_atom --unit eV/atom -o "$OUT/$name" \
        --limit "$LIMIT" --epochs "$EPOCHS" --lr 1e-3 --layers "$layers" --features "$features" \
        --heads "$heads" --fc-features 128 ${THREADS:+--threads $THREADS} > "$OUT/$name.log" 2>&1
done
printf '%-12s %10s %12s %10s\n' config best_mae wall_min params
for spec in "L5-F64-H1" "L3-F64-H1" "L5-F128-H1" "L5-F64-H2"; do
    "$PY" - "$OUT/$spec" <<'PY'
import csv, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = list(csv.DictReader(open(run / "history.csv")))
from crystalprop.model.checkpoint import read_checkpoint
_, params = read_checkpoint(run / "best.ckpt")
n = sum(int(p.asnumpy().size) for k, p in params.items() if "moving" not in k)
print(f"{run.name:12s} {min(float(r['val_mae']) for r in rows):10.4f} {float(rows[-1]['elapsed_h']) * 60:12.1f} {n:10d}")
PY
done
