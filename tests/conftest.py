"""Shared fixtures: one CPU thread for the INSR tests, and small command-line runs computed once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from neuralnumerics.cli import main

from .helpers import small_run


@pytest.fixture(scope="session")
def one_thread():
    """Run torch on one thread (the INSR tests are timed for it; the CLI's --threads 1 does the same)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def run3(tmp_path_factory, one_thread) -> Path:
    """A finished 3-step small run made by the command line. Treat as read-only: copy it to modify it."""
    out = tmp_path_factory.mktemp("runs") / "run3"
    assert main(small_run(out, 3)) == 0
    return out


@pytest.fixture(scope="session")
def run5(tmp_path_factory, one_thread) -> Path:
    """An uninterrupted 5-step small run with the same settings and seed as :func:`run3`. Read-only."""
    out = tmp_path_factory.mktemp("runs") / "run5"
    assert main(small_run(out, 5)) == 0
    return out


@pytest.fixture
def copy_run(tmp_path):
    """``copy_run(src)`` copies a run directory into this test's tmp_path and returns the copy."""
    def copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst
    return copy
