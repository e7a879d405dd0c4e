"""The OpenAI chat-completions protocol: request bodies (validated by pydantic), response and stream-chunk bodies,
and errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with OpenAI's status codes:
400 for a bad request (unparsable JSON, a missing or mistyped field, a value out of range, a prompt longer than the
model takes), 401 for a missing or unknown API key, 404 for an unknown model or completion, 409 for feedback given
twice, 413 for a body over the size limit, 429 over the rate limit."""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(BaseModel):
    """The fields align honours; other OpenAI fields (user, logit_bias, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @field_validator("messages")
    @classmethod
    def _ends_with_a_turn_to_answer(cls, value):
        if value and value[-1].role == "assistant":
            raise ValueError("the last message must be a user or system message (the assistant answers it)")
        return value

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class FeedbackRequest(BaseModel):
    """POST /v1/feedback: a thumbs `rating` on one choice of a completion, or a `preferred` alternative to it (the
    index of another choice of the same completion, or a text), which becomes a preference pair."""

    model_config = ConfigDict(extra="forbid")

    completion_id: str
    choice: int = Field(0, ge=0)
    rating: Literal["up", "down"] | None = None
    preferred: Union[int, str, None] = None


def parse_body(raw: bytes, model: type[BaseModel]) -> BaseModel:
    """`raw` as a `model`, or an ApiError 400 naming the first field at fault."""
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the request body is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        kind = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
        raise ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param, code=kind) from error


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_body(cid: str, model: str, created: int, choices: list[dict], prompt_tokens: int,
                    completion_tokens: int) -> dict:
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": c["index"], "message": {"role": "assistant", "content": c["content"]},
                         "finish_reason": c["finish_reason"], "logprobs": None, **c.get("extra", {})}
                        for c in choices],
            "usage": usage(prompt_tokens, completion_tokens)}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chunk(cid: str, model: str, created: int, index: int, delta: dict, finish_reason: str | None = None,
          **extra) -> str:
    """One server-sent event of a streamed completion."""
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None, **extra}]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def usage_chunk(cid: str, model: str, created: int, prompt_tokens: int, completion_tokens: int) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}
    return f"data: {json.dumps(body)}\n\n"


DONE = "data: [DONE]\n\n"


def now() -> int:
    return int(time.time())
