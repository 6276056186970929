"""A rubric job's attempt tag: a redelivery on the same host sees at once that the holder died."""

from __future__ import annotations

import os
import subprocess

from services.rubric_rm import jobs


def test_owner_tags_fit_the_column_and_are_unique() -> None:
    tags = {jobs.attempt_owner() for _ in range(100)}
    assert len(tags) == 100
    assert all(len(tag) <= 32 and tag.startswith(f"{os.getpid():x}-") for tag in tags)


def test_a_dead_process_of_this_host_is_seen_dead() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    host = jobs.attempt_owner().split("-")[1]
    assert jobs._holder_died_here(f"{child.pid:x}-{host}-abc")


def test_live_foreign_or_unparsable_holders_are_left_alone() -> None:
    host = jobs.attempt_owner().split("-")[1]
    assert not jobs._holder_died_here(jobs.attempt_owner())  # this very process
    assert not jobs._holder_died_here(f"{os.getppid():x}-{host}-abc")  # alive
    assert not jobs._holder_died_here("1-00000000-abc" if host != "00000000" else "1-11111111-abc")  # other host
    assert not jobs._holder_died_here("0123456789abcdef0123456789abcdef")  # an old plain uuid tag
    assert not jobs._holder_died_here(None)
    assert not jobs._holder_died_here(f"zz-{host}-abc")
