"""The package layout follows the data flow: a stage imports only from the stages before it."""

from __future__ import annotations

import ast
from pathlib import Path

import crystalprop

STAGES = ("utils", "io", "graph", "analysis", "data", "model", "evaluation", "training", "prediction", "cli")
"""crystalprop's packages in the order data flows through them (README, "Code layout"); evaluation before
training, which measures each epoch and joins an ensemble's members with it."""


def _imports(path: Path) -> set[str]:
    """The crystalprop packages a module imports from (its own package's modules included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else \
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        found.update(name.split(".")[1] for name in names if name.startswith("crystalprop.") and name.count("."))
    return found


def test_every_stage_imports_only_earlier_stages():
    """evaluation imported prediction's provenance record, io the graph's Crystal, utils the model's code for
    the compile cache, evaluation training's batch size."""
    root = Path(crystalprop.__file__).parent
    assert sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file()) == sorted(STAGES)
    later = []
    for stage in STAGES:
        for path in sorted((root / stage).rglob("*.py")):
            for imported in _imports(path) & set(STAGES):
                if STAGES.index(imported) > STAGES.index(stage):
                    later.append(f"{path.relative_to(root)} imports crystalprop.{imported}")
    assert later == []
