"""The wheel is the product: its only top-level package is `align` (data/, stages/ and ui/ inside it as
align.data, align.stages and align.ui), it carries the shipped files, and installed into a fresh virtual
environment it runs the CLI and a tiny sft from a folder outside the repository."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, cwd=ROOT, timeout=600)
    (found,) = out.glob("align-*.whl")
    return found


def test_the_wheel_holds_one_top_level_package_and_the_shipped_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"align"}
    for shipped in ("align/data/catalog.json", "align/recipes/tiny.yaml", "align/recipes/default.yaml",
                    "align/templates/chatml.jinja", "align/stages/sft.py", "align/ui/label.py",
                    "align/data/registry.py"):
        assert shipped in names, shipped
    assert any(n.startswith("align/data/benchmarks/") and not n.endswith(".py") for n in names)
    assert any(n.startswith("align/assets/tiny-tokenizer/") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[align.sections]" in text and "stages = align.stages:sections" in text


@pytest.mark.slow
def test_the_installed_wheel_runs_help_and_a_tiny_sft_outside_the_repository(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # the dependencies come from the test environment: its site-packages as a plain path (its .pth files, the
    # editable install's finder among them, are not run), after the new environment's own
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   timeout=300)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "ALIGN_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    where = subprocess.run([str(python), "-c", "import align, align.stages, align.data; "
                            "print(align.__file__); print(align.data.__file__)"],
                           cwd=outside, env=env, capture_output=True, text=True, check=True)
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    shown = subprocess.run([str(python), "-m", "align.run", "--help"], cwd=outside, env=env, capture_output=True,
                           text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "sft" in shown.stdout and "pipeline" in shown.stdout
    runs = tmp_path / "runs"
    sft = subprocess.run([str(python), "-m", "align.run", "sft", "--config", "tiny", f"runs_dir={runs}", "--run",
                          "wheel", "max_steps=2"], cwd=outside, env=env, capture_output=True, text=True, timeout=900)
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert (runs / "wheel" / "sft" / "manifest.json").is_file()
    assert not list(outside.iterdir())  # nothing written into the working folder


def test_the_editable_install_still_maps_the_folders():
    """The repository's own environment keeps importing data/, stages/ and ui/ as align.* from their folders."""
    import align.data
    import align.stages
    import align.ui
    from align.config import sections

    assert Path(align.data.__file__).parent == ROOT / "data"
    assert Path(align.stages.__file__).parent == ROOT / "stages"
    assert Path(align.ui.__file__).parent == ROOT / "ui"
    assert {"sft", "rm", "dpo", "ppo", "gate", "pipeline", "eval"} <= set(sections())
