"""Fixtures of the serving tests."""

from __future__ import annotations

import pytest

from tests.serving.support import make_run


@pytest.fixture()
def demo_runs(tmp_path, tiny_model_dir):
    """A runs folder with run demo: the tiny model as a promoted sft stage."""
    runs = tmp_path / "runs"
    make_run(runs, tiny_model_dir, "demo")
    return runs
