"""`engine=vllm`: the same model folder served through vLLM's asynchronous engine, on a GPU machine.

Behind the transformers engine's interface (align.serving.engine: `encode`, `submit(GenerationRequest)` whose
`emit` gets ("text", choice, delta) ... ("done", choice, finish_reason, completion_tokens) or ("error", message),
`context_length`, `queue_length`, `close`), so the app, its streaming, `n`, `stop`, `seed` and usage counts are
the same code. The prompt is rendered by align's tokenizer (the chat template training used) and handed to vLLM
as token ids; vLLM batches continuously (`max_num_seqs` = serve.max_batch), stops on the stop sequences and on
align's end-of-turn token, and seeds each request. Replies differ from the transformers engine's at the same seed
(another sampler).

Written against vLLM's documented API (`vllm.AsyncEngineArgs`, `vllm.AsyncLLMEngine.from_engine_args`,
`engine.generate({"prompt_token_ids": ...}, SamplingParams, request_id)` yielding cumulative `RequestOutput`s,
`engine.abort`, `engine.shutdown`; vLLM 0.10 to 0.33) and imported only here, lazily. It has not run on this
project's machines: they have no GPU, and vllm's wheels bring a CUDA build of torch.
"""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
import threading

from align.errors import AlignError, ConfigError
from align.serving.engine import GenerationRequest, Messages, chat_prompt_ids


def vllm_problem() -> str | None:
    """Why engine=vllm cannot run here, or None: vllm is not installed, or torch sees no CUDA device."""
    if importlib.util.find_spec("vllm") is None:
        return ("serve.engine=vllm needs the vllm package, which is not installed here: install it on a GPU machine "
                "(pip install vllm; it brings its own CUDA build of torch), or serve with engine=transformers")
    import torch

    if not torch.cuda.is_available():
        return ("serve.engine=vllm needs a CUDA GPU, and torch sees none here; serve with engine=transformers "
                "(CPU or GPU)")
    return None


def check_vllm() -> None:
    """Refuse engine=vllm in one line (exit 2) before any model loads, where it cannot run."""
    problem = vllm_problem()
    if problem:
        raise ConfigError(problem)


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class VllmEngine:
    """vLLM's AsyncLLMEngine on an event loop of its own thread; requests are submitted from the app's threads."""

    name = "vllm"

    def __init__(self, folder: str, tokenizer, *, max_batch: int = 32, on_step=None, **engine_args):
        import vllm

        self.tokenizer, self.on_step = tokenizer, on_step
        self.tokenizer_lock = threading.Lock()
        self.eos = tokenizer.eos_token_id
        self.running = 0  # requests generating (touched on the engine's loop only)
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="align-serve-vllm")
        self._thread.start()
        args = vllm.AsyncEngineArgs(model=str(folder), tokenizer=str(folder), max_num_seqs=int(max_batch),
                                    **engine_args)

        async def start():  # on the loop: the engine's output handler runs there
            return vllm.AsyncLLMEngine.from_engine_args(args)

        self.engine = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        self.context_length = getattr(getattr(self.engine, "model_config", None), "max_model_len", None)

    @classmethod
    def for_model(cls, chat_model, *, max_batch: int = 32, on_step=None) -> "VllmEngine":
        """The engine for a ChatModel (ui.chat): its folder's weights, align's tokenizer."""
        from align.models import load_tokenizer, resolve_source

        check_vllm()
        model = (chat_model.manifest or {}).get("model") or {}
        if model.get("format") == "lora-adapter":
            raise AlignError(f"{chat_model.name} is a LoRA adapter; serve.engine=vllm serves merged weights (train it "
                             f"with lora.save=merged) or serve it with engine=transformers")
        return cls(resolve_source(chat_model.source), load_tokenizer(chat_model.source), max_batch=max_batch,
                   on_step=on_step)

    # -- the request side (the app's threads)
    def encode(self, messages: Messages) -> list[int]:
        with self.tokenizer_lock:
            return chat_prompt_ids(self.tokenizer, messages)

    def submit(self, request: GenerationRequest) -> None:
        if self._closed:
            raise AlignError("the engine is shutting down")
        asyncio.run_coroutine_threadsafe(self._generate(request), self._loop)

    def queue_length(self) -> int:
        return 0  # vLLM queues inside its scheduler

    def close(self) -> None:
        self._closed = True
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # -- the engine's loop
    def _sampling(self, request: GenerationRequest):
        from vllm import SamplingParams

        return SamplingParams(n=request.n, temperature=request.temperature, top_p=request.top_p,
                              max_tokens=request.max_tokens, stop=list(request.stop) or None,
                              stop_token_ids=[self.eos] if self.eos is not None else None, seed=request.seed)

    def _stepped(self, change: int) -> None:
        self.running += change
        if self.on_step:
            self.on_step(self.running, 0)

    async def _generate(self, request: GenerationRequest) -> None:
        request_id = f"align-{secrets.token_hex(8)}"
        sent, done = [0] * request.n, set()
        self._stepped(+1)
        try:
            async for output in self.engine.generate({"prompt_token_ids": list(request.prompt_ids)},
                                                     self._sampling(request), request_id):
                if request.cancelled:
                    await self.engine.abort(request_id)
                    return
                for choice in output.outputs:  # cumulative: each choice's text so far
                    i = choice.index
                    if i in done:
                        continue
                    if len(choice.text) > sent[i]:
                        request.emit(("text", i, choice.text[sent[i]:]))
                        sent[i] = len(choice.text)
                    if choice.finish_reason is not None:
                        done.add(i)
                        request.emit(("done", i, _finish_reason(choice.finish_reason), len(choice.token_ids)))
        except Exception as error:  # noqa: BLE001 — fail this request, keep serving
            request.emit(("error", f"{type(error).__name__}: {error}"))
        finally:
            self._stepped(-1)
