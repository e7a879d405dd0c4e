"""Shared fixtures: the tiny model, a CLI runner, and session-wide tiny SFT and reward-model artifacts."""

from __future__ import annotations

import os

# One thread per process: the tiny model's matrices are too small to split, and on a busy 2-core machine threads
# waiting on each other make the suite many times slower (tests on the embedded model ask for more themselves).
for _var, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("GRADIO_ANALYTICS_ENABLED", "False"),
                     ("TOKENIZERS_PARALLELISM", "false"), ("OMP_NUM_THREADS", "1")):
    os.environ.setdefault(_var, _value)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import run_cli  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from align.models import ensure_tiny

    return ensure_tiny()


@pytest.fixture()
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def tiny_sft(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished, promoted SFT stage on the tiny model (runs/<run>/sft), shared by the whole session."""
    runs = tmp_path_factory.mktemp("session-runs")
    assert run_cli("sft", "--config", "tiny", f"runs_dir={runs}", "--run", "session", "max_steps=4") == 0
    return runs / "session" / "sft"


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory, tiny_sft) -> Path:
    """A finished reward model trained from `tiny_sft` for two steps (runs/<run>/rm), shared by the whole session."""
    runs = tmp_path_factory.mktemp("session-rm-runs")
    assert run_cli("rm", "--config", "tiny", "--from", tiny_sft, f"runs_dir={runs}", "--run", "r", "max_steps=2") == 0
    return runs / "r" / "rm"


@pytest.fixture(scope="session")
def small_scorer(tmp_path_factory) -> str:
    """A real Detoxify-format toxicity checkpoint trained for one step on a few rows (for gate plumbing tests)."""
    from align.gates.toxicity_train import build_offline_checkpoint

    folder = tmp_path_factory.mktemp("scorer") / "minilm-small"
    return str(build_offline_checkpoint(folder, max_steps=1, max_train_rows=16, eval_rows=8, progress=False))


@pytest.fixture(scope="session")
def postgres_server():
    """One real, throwaway PostgreSQL server for the whole session (see tests/postgres.py). Where none can be
    started the tests that need it skip with the reason, or fail when ALIGN_REQUIRE_POSTGRES=1 (as in CI)."""
    from tests import postgres

    reason = postgres.unavailable_reason()
    if reason:
        postgres.skip_or_fail(reason)
    server = postgres.start_server()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def label_db(request, tmp_path) -> str:
    """Where a fresh, empty label store lives: a SQLite file path, or the URL of a new database on the session's
    PostgreSQL server. A test taking it runs once on each."""
    if request.param == "sqlite":
        return str(tmp_path / "labels.sqlite")
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture(autouse=True)
def torch_threads(request):
    """One torch thread for tests on the tiny model (see OMP_NUM_THREADS above); every core for the slow ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads((os.cpu_count() or 1) if request.node.get_closest_marker("slow") else 1)
    yield
    torch.set_num_threads(before)
