"""Several processes (`accelerate launch`, `torchrun`): every process trains, one writes the run folder.

A stage launched with N processes trains data-parallel: each process runs the stage's own part (TRL's trainer
gives each a share of every batch and averages the gradients; the stage's evaluation runs alike in each process,
so no process waits on a collective that another skips). Only the main process writes: it opens the work folder,
saves the model (align.models.save_model), runs the gate, writes the manifest and model card and promotes the
folder. The others write their small by-products (logs, plots) into a scratch folder that is removed, then wait at
a barrier for the main process and exit 0. The Trainer's checkpoints go to the shared work folder (it writes the
shared files from the main process only), so `--resume` works the same way.

The waiting uses a gloo group with a long timeout: the main process may gate for a long while alone, and the
default timeouts (10 min for NCCL, 30 min for gloo) would end the others first. If the main process fails, the
launcher stops the others.
"""

from __future__ import annotations

import os
from datetime import timedelta

from align.log import RANK_VARS, log

WAIT_TIMEOUT = timedelta(hours=24)  # the other processes wait this long for the main one's gate and promotion

# The variables torchrun / accelerate launch (and MPI launchers) set, as accelerate reads them.
_WORLD_SIZE_VARS = ["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"]
_RANK_VARS = list(RANK_VARS)
_LOCAL_RANK_VARS = ["LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK"]

_wait_group = None  # created by start() in every process


def get_int_from_env(names, default: int) -> int:
    """The first of `names` set to a non-negative integer, else `default` (accelerate's rule, without importing
    torch: every command asks this before anything else, and a bad argument should fail in well under a second)."""
    for name in names:
        value = int(os.environ.get(name, -1))
        if value >= 0:
            return value
    return default


def world_size() -> int:
    """How many processes train together (1 without a launcher)."""
    return get_int_from_env(_WORLD_SIZE_VARS, 1)


def rank() -> int:
    """This process's index among all processes, 0 for the main one."""
    return get_int_from_env(_RANK_VARS, 0)


def is_main() -> bool:
    return rank() == 0


def is_local_main() -> bool:
    """The first process of its machine (each machine has its own model cache)."""
    return get_int_from_env(_LOCAL_RANK_VARS, 0) == 0


def check_command(command: str, is_stage: bool) -> None:
    """Under a multi-process launcher only the training stages run: any other command would run N times over."""
    if world_size() > 1 and not is_stage:
        from align.errors import ConfigError

        raise ConfigError(f"`{command}` runs in one process: start it with `python -m align.run {command} ...`; "
                          f"only sft, rm and dpo run under a multi-process launcher (the pipeline's stages one by one)")


def check_supported(name: str, stage, lora: bool) -> None:
    """Refuse, before anything is written, what several processes cannot do yet."""
    from align.errors import ConfigError

    if world_size() > 1 and not getattr(stage, "DISTRIBUTED", True):
        raise ConfigError(f"{name} trains in one process only for now: run it without a multi-process launcher "
                          f"(`python -m align.run {name} ...`); sft, rm and dpo train in several")
    if lora and sharding():
        raise ConfigError(f"LoRA under {sharding()} is not supported: launch with DDP or DeepSpeed ZeRO-2 "
                          f"(align/accelerate/multi-gpu.yaml, deepspeed-zero2.yaml), or set lora.enabled=false")


def start(cpu: bool) -> None:
    """Join the process group (through accelerate, as the TRL trainers do later) when launched with several
    processes, and open the group the waiting uses. Nothing happens in a single process."""
    global _wait_group
    if world_size() == 1:
        _warn_single_cpu_process()
        return
    if _wait_group is not None:
        return
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState(cpu=cpu)  # gloo on CPU, NCCL on GPUs; the trainers reuse this state
    _wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)


def barrier() -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if _wait_group is not None:
        import torch.distributed as dist

        dist.barrier(group=_wait_group)


def from_main(value):
    """The main process's `value`, in every process (e.g. a run name made from the clock)."""
    if _wait_group is None:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=_wait_group)
    return box[0]


def sharding() -> str | None:
    """The launcher's weight-sharding mode, "FSDP" or "DeepSpeed ZeRO-3", or None (one process, DDP, ZeRO-1/2)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "FSDP"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3" or _zero_stage_in_config_file() == 3:
            return "DeepSpeed ZeRO-3"
    return None


def _zero_stage_in_config_file() -> int | None:
    import json

    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return (json.load(handle).get("zero_optimization") or {}).get("stage")


def full_state_dict(model) -> dict | None:
    """The whole weights of a model that is split across processes (FSDP, DeepSpeed ZeRO-3), gathered onto the
    main process's CPU (the others get an empty dict); None when each process holds them whole (one process, DDP,
    ZeRO-1/2). Every process must call it: gathering is collective."""
    if world_size() == 1:
        return None
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    if any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return _without_tied_copies(model, state)
    if any(hasattr(p, "ds_id") for p in model.parameters()):  # parameters partitioned by DeepSpeed ZeRO-3
        import deepspeed

        state = {}
        for prefix, module in model.named_modules():  # one module at a time: never the whole model on a GPU
            with deepspeed.zero.GatheredParameters(list(module.parameters(recurse=False)), modifier_rank=None):
                if is_main():
                    tensors = [*module.named_parameters(recurse=False),
                               *((n, b) for n, b in module.named_buffers(recurse=False)
                                 if n not in module._non_persistent_buffers_set)]
                    state.update({f"{prefix}.{n}" if prefix else n: t.detach().cpu().clone() for n, t in tensors})
        return _without_tied_copies(model, state)
    return None


def _without_tied_copies(model, state: dict) -> dict:
    """Gathered copies of a tied weight (lm_head = embeddings) are separate tensors, which save_pretrained would
    write twice: keep the first name of each shared parameter only, as an unsharded model saves."""
    def clean(name: str) -> str:
        return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")

    every = {clean(name) for name, _ in model.named_parameters(remove_duplicate=False)}
    first = {clean(name) for name, _ in model.named_parameters()}
    return {name: tensor for name, tensor in state.items() if name not in every - first}


def _warn_single_cpu_process() -> None:
    """`accelerate launch --cpu --num_processes N` starts one process unless MPI starts them (--mpirun_hostfile):
    say so instead of training alone silently. Its mark: accelerate sets MASTER_ADDR only for N > 1."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1") and "MASTER_ADDR" in os.environ:
        log.warning("warning: one process only. `accelerate launch --cpu --num_processes N` needs MPI "
                    "(--mpirun_hostfile) to start N processes; without it use `accelerate launch --multi_gpu "
                    "--num_processes N` with device=cpu, or align/accelerate/cpu-2proc.yaml (see README)")
