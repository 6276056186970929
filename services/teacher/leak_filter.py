"""The AMR-SD hint leak filter (see :mod:`trainer.self_distillation.leak_filter`, where it lives).

It is pure text processing that the trainer's in-process teacher applies too, so it sits in a layer
both may import; this module re-exports it under its old home.
"""

from __future__ import annotations

from trainer.self_distillation.leak_filter import (
    WORDS_UP_TO,
    Verdict,
    boxed_contents,
    check_hint,
    guarded_answers,
    number_words,
    numbers_in,
    parse_number,
    spellings,
)

__all__ = ["WORDS_UP_TO", "Verdict", "boxed_contents", "check_hint", "guarded_answers", "number_words", "numbers_in",
           "parse_number", "spellings"]
