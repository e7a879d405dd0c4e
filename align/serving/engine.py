"""Dynamic batching of chat completions on a transformers model, in one background thread.

Requests wait in a queue. Between two decoding steps the engine thread takes every waiting request (up to
`max_batch` rows in all), runs their prompts once (`align.prompt_cache.encode_prompts`: the shared beginning of
the chat template once, a prompt's cache copied for its `n` choices) and joins them to the running batch: the two
KV caches are left-padded to one length and concatenated, the padding masked, and every row keeps its own position
ids, so a row sees what it would see alone (up to float rounding). Then all rows decode together, one forward pass
per token; each row's text goes to its request as it grows, and a row that finished (end of turn, a stop sequence,
max_tokens) leaves the batch at once.

Sampling is `align.sampling.NucleusSampler`, one generator per row seeded by (request seed, 0, choice index), so a
reply depends on its seed and its prompt, not on which requests shared its batch, nor on whether it was streamed.
Temperature 0 is greedy. The chat template is the tokenizer's, as `align.models.load_tokenizer` gives it to
training (`align.generate.chat_inputs` renders prompts the same way).
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from align.errors import AlignError, ModelError

Messages = list[dict]

#: Events a request receives, in order per choice: ("text", choice, delta) ... ("done", choice, finish_reason,
#: completion_tokens); or one ("error", message).
Emit = Callable[[tuple], None]


@dataclass
class GenerationRequest:
    """One chat completion: `prompt_ids` already rendered under the chat template; `emit` gets its events (it is
    called from the engine thread, so it must be thread-safe and quick)."""

    prompt_ids: list[int]
    emit: Emit
    n: int = 1
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: Sequence[str] | None = ()
    seed: int | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # set by the caller (a client that went away): its rows leave the batch

    def __post_init__(self):
        self.stop = tuple(self.stop or ())
        if self.seed is None:
            self.seed = secrets.randbits(31)


@dataclass
class _Row:
    """One choice of one request, decoding."""

    request: GenerationRequest
    choice: int
    sampler: object  # NucleusSampler, or None for greedy
    tokens: list = field(default_factory=list)
    sent: int = 0  # characters of the text already emitted


def chat_prompt_ids(tokenizer, messages: Messages) -> list[int]:
    """Token ids of `messages` under the chat template, the assistant's turn opened (as in training)."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_hold(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` to hold back: the longest ending that begins a stop sequence (it may
    still become one), and a trailing replacement character (half a UTF-8 character)."""
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return max(hold, 1 if text.endswith("\ufffd") else 0)


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop sequence begins in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


class Batch:
    """The rows decoding together: their KV cache, attention mask, next input token and next position."""

    def __init__(self):
        self.rows: list[_Row] = []
        self.cache = None
        self.mask = None
        self.next_tokens = None
        self.positions = None

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, rows: list[_Row], cache, mask, next_tokens, positions) -> None:
        """Add rows whose prompts were encoded together (cache covers `mask`'s columns)."""
        import torch

        if not self.rows:
            self.rows, self.cache, self.mask, self.next_tokens, self.positions = rows, cache, mask, next_tokens, positions
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)])
            old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)])
        self.mask = torch.cat([_left_pad(self.mask, width, dim=1), _left_pad(mask, width, dim=1)])
        self.next_tokens = torch.cat([self.next_tokens, next_tokens])
        self.positions = torch.cat([self.positions, positions])
        self.rows = self.rows + rows

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at `indices`, and drop the leading columns no remaining row uses."""
        import torch

        if not indices:
            self.__init__()
            return
        if len(indices) < len(self.rows):
            index = torch.tensor(indices, dtype=torch.long, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask, self.next_tokens, self.positions = self.mask[index], self.next_tokens[index], self.positions[index]
            self.rows = [self.rows[i] for i in indices]
        unused = int((self.mask.sum(dim=0) == 0).long().cumprod(dim=0).sum())
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]


def _left_pad(tensor, width: int, dim: int = 2):
    """`tensor` padded with zeros at the beginning of `dim` to `width`."""
    import torch

    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class TransformersEngine:
    """The background thread that batches and decodes (see the module docstring)."""

    name = "transformers"

    def __init__(self, model, tokenizer, *, max_batch: int = 32, on_step: Callable[[int, int], None] | None = None):
        from align import sampling

        self.model, self.tokenizer = model, tokenizer
        self.max_batch = max(1, int(max_batch))
        self.on_step = on_step  # (rows in the batch, requests waiting) after every step, for /metrics
        self.eos = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.top_k = sampling.effective_top_k(getattr(model, "generation_config", None))
        self.tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to use from two threads at once
        self.waiting: queue.Queue[GenerationRequest] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="align-serve-engine")
        self._thread.start()

    # -- the request side
    def encode(self, messages: Messages) -> list[int]:
        with self.tokenizer_lock:
            return chat_prompt_ids(self.tokenizer, messages)

    @property
    def context_length(self) -> int | None:
        return getattr(getattr(self.model, "config", None), "max_position_embeddings", None)

    def submit(self, request: GenerationRequest) -> None:
        if self._stopping.is_set():
            raise AlignError("the engine is shutting down")
        self.waiting.put(request)

    def queue_length(self) -> int:
        return self.waiting.qsize()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    # -- the engine thread
    def _loop(self) -> None:
        import torch

        batch = Batch()
        with torch.no_grad():
            while not self._stopping.is_set():
                if not batch:
                    try:
                        first = self.waiting.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    self._admit(batch, [first])
                self._admit(batch, self._take_waiting(self.max_batch - len(batch)))
                if batch:
                    try:
                        self._step(batch)
                    except Exception as error:  # noqa: BLE001 — fail the batch's requests, keep serving
                        self._fail(batch.rows, error)
                        batch.keep([])
                if self.on_step:
                    self.on_step(len(batch), self.waiting.qsize())

    def _take_waiting(self, room: int) -> list[GenerationRequest]:
        taken = []
        while room > 0:
            try:
                request = self.waiting.get_nowait()
            except queue.Empty:
                break
            taken.append(request)
            room -= request.n
        return taken

    def _admit(self, batch: Batch, requests: list[GenerationRequest]) -> None:
        """Run the prompts of `requests` once and join their rows (n per request) to `batch`."""
        from align import sampling
        from align.prompt_cache import encode_prompts

        if not requests:
            return
        try:
            encoded = encode_prompts(self.model, [r.prompt_ids for r in requests], self.pad_id, keep_last=True)
            if encoded.cache is None:
                raise ModelError("a prompt of a single token cannot be batched")
            order = [i for i, r in enumerate(requests) for _ in range(r.n)]
            encoded = encoded.select(order)
        except Exception as error:  # noqa: BLE001 — a bad batch fails its requests, not the server
            self._fail([_Row(r, 0, None) for r in requests], error)
            return
        rows = []
        for i, request in enumerate(requests):
            for k in range(request.n):
                sampler = None
                if request.temperature > 0:
                    sampler = sampling.NucleusSampler(request.temperature, request.top_p,
                                                      [sampling.reply_seed(request.seed, 0, k)], top_k=self.top_k)
                rows.append(_Row(request, k, sampler))
        mask = encoded.attention_mask[:, :-1]
        batch.join(rows, encoded.cache, mask, encoded.input_ids[:, -1], encoded.lengths - 1)

    @staticmethod
    def _fail(rows: list[_Row], error: BaseException) -> None:
        for request in {id(r.request): r.request for r in rows}.values():
            request.emit(("error", f"{type(error).__name__}: {error}"))

    def _step(self, batch: Batch) -> None:
        """One forward pass for every row; each row's new token, text and end."""
        import torch

        mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)
        try:
            out = self.model(input_ids=batch.next_tokens[:, None], attention_mask=mask,
                             position_ids=batch.positions[:, None], past_key_values=batch.cache, use_cache=True)
        except Exception as error:  # noqa: BLE001
            self._fail(batch.rows, error)
            batch.keep([])
            return
        batch.cache, batch.mask = out.past_key_values, mask
        chosen = self._sample(batch.rows, out.logits[:, -1].float())
        keep = []
        for i, (row, token) in enumerate(zip(batch.rows, chosen)):
            if not self._advance(row, token):
                keep.append(i)
        batch.next_tokens = torch.tensor(chosen, dtype=torch.long, device=mask.device)
        batch.positions = batch.positions + 1
        batch.keep(keep)

    @staticmethod
    def _sample(rows: list[_Row], scores) -> list[int]:
        """Each row's next token: greedy rows by argmax, the others by their own generators, the rows that share
        temperature and top_p in one sampler call (`NucleusSampler.with_generators`)."""
        chosen = scores.argmax(dim=-1).tolist()
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            if row.sampler is not None:
                groups.setdefault((row.sampler.temperature, row.sampler.top_p), []).append(i)
        for indices in groups.values():
            sampler = rows[indices[0]].sampler.with_generators([rows[i].sampler.generators[0] for i in indices])
            drawn = sampler(None, scores[indices]).argmax(dim=-1).tolist()
            for i, token in zip(indices, drawn):
                chosen[i] = token
        return chosen

    def _advance(self, row: _Row, token: int) -> bool:
        """Record `token` for `row`, emit its new text; True when the row has finished."""
        request = row.request
        if request.cancelled:
            return True
        finish = None
        if token == self.eos:
            finish = "stop"
        else:
            row.tokens.append(token)
        with self.tokenizer_lock:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        cut = find_stop(text, request.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
        if finish is None and len(row.tokens) >= request.max_tokens:
            finish = "length"
        end = len(text) if finish else len(text) - stop_hold(text, request.stop)
        if end > row.sent:
            request.emit(("text", row.choice, text[row.sent:end]))
            row.sent = end
        if finish:
            request.emit(("done", row.choice, finish, len(row.tokens)))
        return finish is not None

