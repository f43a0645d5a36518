"""Every fenced Python block of README.md runs as written, top to bottom, in one fresh process."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[str]:
    return FENCE.findall(README.read_text())


def test_readme_has_python_blocks():
    assert len(blocks()) >= 6


def test_readme_snippets_run_as_written(tmp_path):
    script = ["import time as _t"]
    for i, code in enumerate(blocks()):
        script.append(f"_t0 = _t.perf_counter()\nprint('--- block {i}', flush=True)")
        script.append(code)
        script.append(f"print('--- block {i} took %.1f s' % (_t.perf_counter() - _t0), flush=True)")
    path = tmp_path / "readme_snippets.py"
    path.write_text("\n".join(script))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    print(out.stdout[-3000:], f"total {time.perf_counter() - t0:.1f} s")
    assert out.returncode == 0, \
        f"a README block failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    assert f"--- block {len(blocks()) - 1} took" in out.stdout
    assert not re.search(r"\bnan\b", out.stdout, re.I), out.stdout
    assert "converged=True" in out.stdout  # the first block's printed result
