"""scripts/last_epoch.py: a run's last-epoch weights with its card, for joining fold members as they ended."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import train_config, train_stopped_mid_epoch, write_json_dataset
from crystalprop.utils.backend import mindspore_module, set_device
from crystalprop.model.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("ema", "stop_epoch"), [(None, 2), (0.9, 1)])
def test_last_epoch_script_saves_the_last_weights_not_the_best(tmp_path, ema, stop_epoch):
    """Without --ema the train cell's last weights; with it the weight average, which such a run keeps.
    Each run stops where its partial epoch is not its best, so best.ckpt holds an earlier epoch's weights."""
    set_device("CPU")
    data = write_json_dataset(tmp_path / "data.json", 40)
    run_dir = tmp_path / "run"
    stopped = train_stopped_mid_epoch(data, run_dir, train_config(ema=ema), epoch=stop_epoch)
    assert stopped.best_epoch == int(stopped.best_epoch) <= stopped.epochs_done  # a whole epoch, not the partial one
    out = tmp_path / "last_epoch.ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOG_v": "3"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "last_epoch.py"), str(run_dir), str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    card, params = read_checkpoint(out, arrays=True)
    best_card, best = read_checkpoint(run_dir / "best.ckpt", arrays=True)
    raw = mindspore_module().load_checkpoint(str(run_dir / "last.ckpt"))
    prefix = "ema." if ema else "net."
    last = {k[len(prefix):]: v.asnumpy() for k, v in raw.items() if k.startswith(prefix)}
    assert card.target == best_card.target and card.model == best_card.model
    assert card.metrics == {} and best_card.metrics  # the best epoch's figures are not the last's
    assert sorted(params) == sorted(best)
    for name in best:
        np.testing.assert_array_equal(params[name], last[name])
    assert any(not np.array_equal(best[name], last[name]) for name in best)
