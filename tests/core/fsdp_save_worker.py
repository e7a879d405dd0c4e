"""Run by tests/core/test_distributed.py in each of 2 CPU processes (torchrun): shard the tiny model with FSDP2 and
save it through align.models.save_model, which must gather the whole weights before the main process writes.

    python -m torch.distributed.run --nproc_per_node 2 tests/core/fsdp_save_worker.py <folder>
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(folder: str) -> None:
    from accelerate import PartialState
    from torch.distributed.fsdp import fully_shard

    from align import models

    PartialState(cpu=True)  # gloo, as align.distributed.start does on CPU
    source = str(models.ensure_tiny())
    model = models.load_causal_lm(source, device="cpu")
    whole = model.model.embed_tokens.weight.shape
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    local = model.model.embed_tokens.weight.to_local().shape
    assert local[0] * 2 == whole[0], (local, whole)  # each process holds half of the rows
    models.save_model(model, models.load_tokenizer(source), Path(folder))


if __name__ == "__main__":
    main(sys.argv[1])
