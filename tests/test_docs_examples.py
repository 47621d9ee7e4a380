"""The Python examples in the method pages run as written (each block of a page, in order, in one namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["linalg.md", "linalg_skr.md", "linalg_relax.md", "fluids.md", "curvature.md", "ot.md", "elasticity.md",
         "dcdm.md"]


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page, one_thread):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    assert blocks, f"{page} has no Python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, f"{page}", "exec"), namespace)


def test_readme_linear_solver_example_runs(one_thread):
    readme = (DOCS.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "neuralnumerics.linalg" in b]
    assert len(blocks) == 1
    exec(compile(blocks[0], "README.md", "exec"), {})


@pytest.mark.parametrize("module", ["neuralnumerics.curvature", "neuralnumerics.ot"])
def test_readme_examples_run(module, one_thread):
    readme = (DOCS.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if module in b]
    assert len(blocks) == 1
    exec(compile(blocks[0], "README.md", "exec"), {})
