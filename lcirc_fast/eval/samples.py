"""One benchmark question ready to run: the prompt split around its context, the QD query, the
gold answers and what the scorer needs."""
from __future__ import annotations

from dataclasses import dataclass, field

QUERY_MARKERS = ("Question", "Instruction", "Query", "问题")


def query_start(after_template: str) -> int:
    """Where the question field starts in the text after the context: the last query marker
    of the template, or 0 (the whole text after the context) when it has none."""
    return max(0, *(after_template.rfind(m) for m in QUERY_MARKERS))


@dataclass
class Sample:
    """`prompt` = before + context + after; `query` (the QD mixer's input) is the tail of
    `after` from its question field on."""
    task: str
    id: str
    before: str
    context: str
    after: str
    query: str
    answers: object
    max_new_tokens: int
    extra: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.before + self.context + self.after


def from_template(task: str, sample_id: str, template: str, fields: dict, answers, max_new_tokens: int,
                  extra: dict | None = None) -> Sample:
    """A Sample from a template holding `{context}` once; the other fields fill both sides."""
    if template.count("{context}") != 1:
        raise ValueError(f"template of {task} must hold {{context}} exactly once")
    before_t, after_t = template.split("{context}")
    q = query_start(after_t)
    return Sample(task=task, id=sample_id, before=before_t.format(**fields), context=fields["context"],
                  after=after_t.format(**fields), query=after_t[q:].format(**fields), answers=answers,
                  max_new_tokens=max_new_tokens, extra=dict(extra or {}))
