"""rewardhub.boxed: the one reader of ``\\boxed{…}`` answers (expected values written by hand)."""

from __future__ import annotations

import pytest

from rewardhub.boxed import all_boxed, last_boxed


@pytest.mark.parametrize(("text", "expected"), [
    (r"so \boxed{ 42 }.", "42"),
    (r"first \boxed{1}, then \fbox{2}", "2"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed {7}", "7"),                       # a space before the brace
    (r"\boxed{4} then \boxed{5", "4"),          # the last box never closes: the one before it
    (r"\boxed{}", ""),                          # empty, but there
    ("no box here", None),
    (r"\boxed{a{b}", None),                     # unbalanced
])
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


def test_last_boxed_without_fbox_reads_only_boxed() -> None:
    assert last_boxed(r"\boxed{1} and \fbox{2}", fbox=False) == "1"
    assert last_boxed(r"\fbox{2}", fbox=False) is None


def test_all_boxed_keeps_top_level_boxes_in_order() -> None:
    assert all_boxed(r"\boxed{1} x \boxed{\boxed{2}+3} \boxed{4") == ["1", r"\boxed{2}+3"]
    assert all_boxed(r"\boxed{ a } \fbox{b}") == ["a", "b"]
    assert all_boxed("none") == []
