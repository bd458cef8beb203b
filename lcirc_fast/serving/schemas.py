"""Request bodies of the OpenAI-compatible endpoints (unknown fields are ignored)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Sampling(_Body):
    """Options shared by completions and chat. `document`: the id of a stored document whose
    memory the answer reads (the `openai` client sends it with `extra_body`)."""
    model: str | None = None
    max_tokens: int | None = Field(default=16, description="new tokens at most (>= 1)")
    temperature: float = Field(default=1.0, ge=0, le=2, description="0: greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="only 1 choice per request")
    document: str | None = Field(default=None, max_length=64)


class CompletionRequest(Sampling):
    prompt: str


class ChatMessage(_Body):
    role: str = Field(max_length=32)
    content: str


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None


class DocumentRequest(_Body):
    text: str = Field(min_length=1)
