"""The shipped arithmetic problems ("What is 3 plus 4?") and their checker, "the last number equals the
answer": the `arithmetic` evaluation task (slm_core.post.tasks), the built-in corpus `builtin:arithmetic` and
GRPO's offline prompt set (slm_core.train.grpo) all read them here, so the three agree on what is right."""

from __future__ import annotations

import random
import re
from typing import Optional

# The evaluation task's filter takes the last run of digits in the answer ("3 plus 4 is 7." -> "7")
LAST_NUMBER_PATTERN = r"(\d+)"
_LAST_NUMBER = re.compile(LAST_NUMBER_PATTERN)
# How the evaluation task (and so GRPO, and the corpus) asks a question
QUESTION_FORMAT = "Question: {prompt}\nAnswer:"
MAX_ADDEND = 6
TASK_SEED = 155_921  # the evaluation task's items
CORPUS_SEED = 7_919  # the built-in corpus and GRPO's prompts: another stream of the same small problem space
CORPUS_DOCUMENTS = 4000


def last_number(text: str) -> Optional[str]:
    """The last run of digits in `text`, or None."""
    found = _LAST_NUMBER.findall(text or "")
    return found[-1] if found else None


def last_number_equals(text: str, reference: str) -> bool:
    """Whether the answer's last number is the reference (the `arithmetic` task's metric)."""
    return last_number(text) == str(reference).strip()


def arithmetic_items(n: int, seed: int = TASK_SEED) -> list[dict]:
    """`n` problems {"prompt": "What is a plus b?", "reference": "a+b"} with addends 0..MAX_ADDEND."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        a, b = rng.randint(0, MAX_ADDEND), rng.randint(0, MAX_ADDEND)
        items.append({"prompt": f"What is {a} plus {b}?", "reference": str(a + b)})
    return items


def worked_answer(prompt: str, reference: str) -> str:
    """The answer the corpus teaches: "3 plus 4 is 7." (its last number is the reference)."""
    terms = prompt.removeprefix("What is ").removesuffix("?")
    return f" {terms} is {reference}."


def arithmetic_documents(n: int = CORPUS_DOCUMENTS, seed: int = CORPUS_SEED) -> list[str]:
    """The `builtin:arithmetic` corpus: questions as the task asks them, each followed by its worked answer."""
    return [QUESTION_FORMAT.format(prompt=item["prompt"]) + worked_answer(item["prompt"], item["reference"])
            for item in arithmetic_items(n, seed)]
