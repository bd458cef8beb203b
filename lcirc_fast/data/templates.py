"""Prompt templates for long-form QA. Each has a prefix (before the context) and a suffix (after
it) that contains "Question:"; the query fed to the QD mixer is the suffix from "Question:" on."""
from __future__ import annotations

from dataclasses import dataclass

QUESTION_MARK = "Question:"


@dataclass(frozen=True)
class Template:
    name: str
    prefix: str
    suffix: str            # fields: {question}, and {options} for multiple choice, {n_words}
    multiple_choice: bool = False

    def fill_suffix(self, question: str, options: list[str] | None = None, n_words: int = 0) -> str:
        if self.multiple_choice:
            if not options or len(options) != 4:
                raise ValueError(f"template {self.name!r} needs exactly 4 options")
            opts = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(options))
            return self.suffix.format(question=question, options=opts, n_words=n_words)
        return self.suffix.format(question=question, n_words=n_words)


TEMPLATES: tuple[Template, ...] = (
    Template("read_answer", "Read the text below and answer the question that follows.\n\n",
             "\n\nQuestion: {question}\nAnswer:"),
    Template("concise", "You are given a long document. Answer the question as concisely as you "
             "can, using a single phrase if possible.\n\nDocument:\n",
             "\n\nNow answer the question based on the document. Do not explain.\n\n"
             "Question: {question}\nAnswer:"),
    Template("passage_only", "Answer the question based on the given passage. Only give the "
             "answer and nothing else.\n\nPassage:\n",
             "\n\nQuestion: {question}\nAnswer:"),
    Template("n_words", "Here is a long text.\n\n",
             "\n\nQuestion: {question}\nAnswer this question with {n_words} words.\nAnswer:"),
    Template("book_context", "The following is taken from a book.\n\n",
             "\n\nUsing the book above, answer the question.\nQuestion: {question}\nAnswer:"),
    Template("mc_letter", "Read the text and choose the correct option.\n\n",
             "\n\nQuestion: {question}\n{options}\nAnswer with the letter of the correct "
             "option.\nAnswer:", True),
    Template("mc_exam", "Below is a long document followed by a multiple-choice question.\n\n",
             "\n\nQuestion: {question}\nOptions:\n{options}\nAnswer:", True),
)

TEMPLATE_BY_NAME = {t.name: t for t in TEMPLATES}


def get_template(name: str) -> Template:
    if name not in TEMPLATE_BY_NAME:
        raise KeyError(f"unknown template {name!r}; known: {sorted(TEMPLATE_BY_NAME)}")
    return TEMPLATE_BY_NAME[name]


def query_text(suffix: str) -> str:
    """The text from the last "Question:" of a filled suffix/prompt to its end."""
    i = suffix.rfind(QUESTION_MARK)
    if i < 0:
        raise ValueError("prompt has no 'Question:' to start the query at")
    return suffix[i:]
