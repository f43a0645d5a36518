"""Every notebook runs top to bottom in small mode (OTREG_NOTEBOOK_SMALL=1), shows no NaN, and
passes its own last cell, which asserts the notebook's story (see notebooks/execute.py)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_quickstart", "02_sliced_control_variates", "03_small_epsilon_sns",
            "04_sparse_ot_moe", "05_ot_regularization_optax"]


def _runner():
    spec = importlib.util.spec_from_file_location("nb_execute", ROOT / "notebooks" / "execute.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_notebook_is_listed_and_committed_with_outputs():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    listing = (ROOT / "notebooks" / "README.md").read_text()
    for p in NOTEBOOKS:
        assert p.name in listing, f"{p.name} is not listed in notebooks/README.md"
        nb = json.loads(p.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        first = "".join(code[0]["source"])
        assert "OTREG_NOTEBOOK_SMALL" in first and "pip" in first and "jax.devices()" in first
        assert all(c.get("outputs") for c in code[:1]), f"{p.name}: committed without outputs"
        assert any(o.get("data", {}).get("image/png") for c in code for o in c.get("outputs", [])),\
            f"{p.name}: no plot in the committed outputs"
        assert p.stat().st_size < 1_500_000, f"{p.name} is {p.stat().st_size} bytes"
        text = "".join("".join(c["source"]) for c in code)
        private = re.findall(r"otreg(?:\.\w+)*\._(?!_)\w*", text)
        assert not private, f"{p.name}: private API {private}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_small_mode(path):
    pytest.importorskip("nbclient")
    seconds = _runner().run(path, small=True, write=False, timeout=300)
    print(f"{path.name}: {seconds:.1f} s")
