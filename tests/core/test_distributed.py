"""Training in several processes.

`accelerate launch` with the shipped 2-process CPU config (gloo, data parallel) must train the same model as one
process with the same batches: 2 processes x 4 rows per step against 1 process x 4 rows x 2 accumulated
micro-batches, the same loss at every step, the same tokens seen, the same weights. Gradients that were not averaged,
or rows that both processes read, would give another curve and other weights (one process on 4 rows per step ends
~0.02 away in the weights, the 2-process run ~1e-6). Only the main process writes the run folder and promotes it,
once; the other one leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.paths import PACKAGE_DIR

PROJECT_DIR = Path(__file__).resolve().parents[2]  # the repository root
from tests.helpers import run_cli

ACCELERATE_DIR = PACKAGE_DIR / "accelerate"
TINY = ("--config", "tiny", "max_steps=4", "eval_rows=4")
TWO_PROCESSES = ("batch_size=4",)  # per process: 8 rows per step
ONE_PROCESS = ("batch_size=4", "grad_accum=2")  # the same micro-batches, one after the other


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _subprocess_env(scratch: Path) -> dict:
    """One thread per process, offline, and a private temporary folder (to see what the processes leave)."""
    scratch.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TMPDIR": str(scratch)}


def _launch_command(*args: str) -> list[str]:
    """`accelerate launch --config_file align/accelerate/cpu-2proc.yaml -m align.run ...` on a free port."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_DIR / "cpu-2proc.yaml"),
            "--main_process_port", str(_free_port()), "-m", "align.run", *args]


def launch_two(scratch: Path, *args: str) -> str:
    """Run `align.run ...` in 2 processes; returns the output."""
    result = subprocess.run(_launch_command(*args), cwd=PROJECT_DIR, env=_subprocess_env(scratch), capture_output=True,
                            text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def run_one(*args) -> None:
    """The same command in this process, on one thread like each launched process (the slow marker gives this
    process every core, which on a busy machine makes a tiny model many times slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_cli(*args) == 0
    finally:
        torch.set_num_threads(before)


def _losses(stage_dir: Path) -> list[float]:
    history = json.loads((stage_dir / "logs" / "history.json").read_text())
    return [row["loss"] for row in history if "loss" in row]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


def assert_same_training(two: Path, one: Path, parent: Path) -> None:
    """The 2-process stage folder trained exactly like the 1-process one, and was written by one process."""
    manifests = {n: json.loads((folder / "manifest.json").read_text()) for n, folder in ((2, two), (1, one))}
    assert manifests[2]["status"] == manifests[1]["status"] in ("promoted", "ungated")  # ungated: gate off
    assert manifests[2]["timing"]["world_size"] == 2 and manifests[1]["timing"]["world_size"] == 1
    for key in ("steps", "train_tokens"):  # tokens are counted over both processes: duplicated rows would differ
        assert manifests[2]["metrics"][key] == manifests[1]["metrics"][key], key
    for name in ("model.safetensors", "config.json", "tokenizer.json", "config.yaml", "README.md",
                 "logs/history.json", "logs/loss.png"):
        assert (two / name).is_file(), name

    losses_two, losses_one = _losses(two), _losses(one)
    assert len(losses_two) == len(losses_one) == manifests[1]["metrics"]["steps"]
    assert max(abs(a - b) for a, b in zip(losses_two, losses_one)) < 1e-3, (losses_two, losses_one)
    assert losses_two[-1] < losses_two[0]

    trained, reference, start = _weights(two), _weights(one), _weights(parent)
    moved = _max_difference(reference, start)
    assert moved > 1e-3  # training changed the weights ...
    assert _max_difference(trained, reference) < 0.05 * moved  # ... and both runs changed them alike


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, tiny_model_dir):
    """SFT, then DPO from it, each launched in 2 processes (run `pair`)."""
    root = tmp_path_factory.mktemp("distributed")
    runs, scratch = root / "runs", root / "tmp"
    outputs = {"sft": launch_two(scratch, "sft", *TINY, *TWO_PROCESSES, "--run", "pair", f"runs_dir={runs}")}
    outputs["dpo"] = launch_two(scratch, "dpo", *TINY, *TWO_PROCESSES, "eval_prompts=2", "reward_model=none",
                                "--from", str(runs / "pair" / "sft"), "--run", "pair", f"runs_dir={runs}")
    return runs, scratch, outputs


@pytest.mark.slow
def test_two_process_runs_are_written_and_promoted_once(two_process_runs):
    runs, scratch, outputs = two_process_runs
    for stage, output in outputs.items():
        assert output.count(f"[align] {stage} finished") == 1, output[-3000:]
    assert sorted(p.name for p in (runs / "pair").iterdir()) == ["dpo", "sft"]  # no .work left behind
    for stage in outputs:  # TensorBoard writes from the main process only
        assert len(list((runs / "pair" / stage / "logs").glob("events.out.tfevents.*"))) == 1
    assert [p.name for p in scratch.iterdir() if p.name.startswith("align-")] == []  # the other's scratch is gone


@pytest.mark.slow
def test_two_process_sft_trains_like_one_process_with_the_same_global_batch(two_process_runs, tiny_model_dir):
    runs, _, _ = two_process_runs
    run_one("sft", *TINY, *ONE_PROCESS, "--run", "single", f"runs_dir={runs}")
    assert_same_training(runs / "pair" / "sft", runs / "single" / "sft", parent=tiny_model_dir)


@pytest.mark.slow
def test_two_process_dpo_trains_like_one_process_with_the_same_global_batch(two_process_runs):
    runs, _, _ = two_process_runs
    parent = runs / "pair" / "sft"
    run_one("dpo", *TINY, *ONE_PROCESS, "eval_prompts=2", "reward_model=none", "--from", parent,
            "--run", "single-dpo", f"runs_dir={runs}")
    two = runs / "pair" / "dpo"
    assert_same_training(two, runs / "single-dpo" / "dpo", parent=parent)
    assert _losses(two)[0] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as its reference
    assert json.loads((two / "manifest.json").read_text())["parent"]["path"] == str(parent)


@pytest.mark.slow
def test_two_process_sft_resumes_after_both_processes_are_killed(tmp_path, tiny_model_dir):
    """Kill the launcher and both processes once a checkpoint exists: `--resume` in 2 processes then trains on to
    the same model as an uninterrupted run."""
    import psutil

    from align.runs import StageWork

    runs, scratch = tmp_path / "runs", tmp_path / "tmp"
    # 40 steps x 8 rows within the first epoch of 512 rows (at an epoch's end accelerate tops the last batch up
    # with rows from the start, so 2 processes match 1 only where the rows divide evenly).
    sft = ("sft", "--config", "tiny", "max_rows=512", "max_steps=40", "save_steps=4", "eval_rows=4",
           f"runs_dir={runs}")
    two = (*sft, *TWO_PROCESSES, "--run", "cut")
    launcher = subprocess.Popen(_launch_command(*two), cwd=PROJECT_DIR, env=_subprocess_env(scratch),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = StageWork(runs / "cut", "sft")
    deadline = time.monotonic() + 300
    while work.last_checkpoint() is None and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert launcher.poll() is None, "the run ended before it could be interrupted"
    processes = [launcher, *psutil.Process(launcher.pid).children(recursive=True)]  # the launcher, torchrun, workers
    for process in processes:
        process.kill()
    launcher.wait()
    assert work.last_checkpoint() is not None and not (runs / "cut" / "sft").exists()

    assert "[align] resuming sft from" in launch_two(scratch, *two, "--resume")
    run_one(*sft, *ONE_PROCESS, "--run", "single")
    assert_same_training(runs / "cut" / "sft", runs / "single" / "sft", parent=tiny_model_dir)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_two_process_online_stages_train_on_both_and_write_once(stage, tmp_path, tiny_model_dir):
    """grpo and rloo (TRL's trainers, align's rewards and comparison) in 2 processes: one run folder, written and
    promoted once, trained for the steps asked with the rows of both processes."""
    runs, scratch = tmp_path / "runs", tmp_path / "tmp"
    output = launch_two(scratch, stage, "--config", "tiny", "--from", str(tiny_model_dir), "--run", "pair",
                        f"runs_dir={runs}", "rewards=[python:tests.stages.online_rewards.low_token_share]",
                        "max_steps=2", "eval_prompts=2")
    assert output.count(f"[align] {stage} finished") == 1, output[-3000:]
    assert output.count("win rate vs the parent is skipped") == 1  # said once, by the main process
    assert sorted(p.name for p in (runs / "pair").iterdir()) == [stage]  # no .work left behind
    manifest = json.loads((runs / "pair" / stage / "manifest.json").read_text())
    assert manifest["status"] == "ungated" and manifest["timing"]["world_size"] == 2
    assert manifest["metrics"]["steps"] == 2
    assert len(list((runs / "pair" / stage / "logs").glob("events.out.tfevents.*"))) == 1
    assert (runs / "pair" / stage / "model.safetensors").is_file()
    assert [p.name for p in scratch.iterdir() if p.name.startswith("align-")] == []


def test_ppo_refuses_several_processes_before_writing_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun / accelerate launch set; refused before joining a group
    runs = tmp_path / "runs"
    assert run_cli("ppo", "--config", "tiny", f"runs_dir={runs}") == 2
    assert "ppo trains in one process only" in capsys.readouterr().err
    assert not runs.exists()


def test_other_commands_refuse_several_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_cli("pipeline", "--config", "tiny", f"runs_dir={tmp_path / 'runs'}") == 2
    assert "`pipeline` runs in one process" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_lora_is_refused_when_the_weights_are_sharded(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with fsdp.yaml sets
    assert run_cli("sft", "--config", "tiny", "lora.enabled=true", f"runs_dir={tmp_path / 'runs'}") == 2
    assert "LoRA under FSDP is not supported" in capsys.readouterr().err


def test_a_cpu_launch_that_starts_one_process_says_so(monkeypatch, capsys):
    """`accelerate launch --cpu --num_processes 2` without MPI starts one process (it sets these two variables)."""
    from align import distributed

    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    distributed.start(cpu=True)
    assert "one process only" in capsys.readouterr().out and distributed.world_size() == 1


def test_save_model_gathers_fsdp_sharded_weights(tmp_path, tiny_model_dir):
    """FSDP2 splits every weight across the processes; the saved folder must hold the whole, unchanged weights."""
    folder = tmp_path / "saved"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(Path(__file__).with_name("fsdp_save_worker.py")), str(folder)]
    result = subprocess.run(command, cwd=PROJECT_DIR, env={**_subprocess_env(tmp_path / "tmp"), "PYTHONPATH": str(PROJECT_DIR)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert _max_difference(_weights(folder), _weights(tiny_model_dir)) == 0.0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folder)  # a plain model folder


# ------------------------------------------------------------------------------- shipped accelerate configs


def _launcher_env(config_file: Path) -> dict:
    """The environment `accelerate launch --config_file <file>` gives each process (built as accelerate does)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "-m", "align.run", "sft"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name, distributed_type, sharding", [
    ("cpu-2proc.yaml", "MULTI_GPU", None),  # torchrun's launcher; device=cpu makes it gloo
    ("multi-gpu.yaml", "MULTI_GPU", None),
    ("fsdp.yaml", "FSDP", "FSDP"),
    ("deepspeed-zero2.yaml", "DEEPSPEED", None),
    ("deepspeed-zero3.yaml", "DEEPSPEED", "DeepSpeed ZeRO-3"),
])
def test_shipped_accelerate_configs_load(name, distributed_type, sharding, monkeypatch):
    """Each file loads with accelerate's own config class, names only options accelerate knows (it ignores unknown
    ones in fsdp_config / deepspeed_config silently), and launches processes that align sees as intended."""
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    from align import distributed

    path = ACCELERATE_DIR / name
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig) and config.distributed_type.value == distributed_type
    assert config.mixed_precision == "no"  # the recipe's model.dtype decides
    options = {action.dest for action in launch_command_parser()._actions}
    nested = [*config.deepspeed_config, *(k if k.startswith("fsdp_") else f"fsdp_{k}" for k in config.fsdp_config)]
    assert [key for key in nested if key not in options] == []

    for key, value in _launcher_env(path).items():
        monkeypatch.setenv(key, value)
    assert distributed.sharding() == sharding
    if name == "deepspeed-zero3.yaml":  # whole 16-bit weights in the trainer's checkpoints
        assert os.environ["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"


def test_all_shipped_accelerate_configs_are_tested():
    assert sorted(p.name for p in ACCELERATE_DIR.glob("*.yaml")) == sorted(
        ["cpu-2proc.yaml", "multi-gpu.yaml", "fsdp.yaml", "deepspeed-zero2.yaml", "deepspeed-zero3.yaml"])
