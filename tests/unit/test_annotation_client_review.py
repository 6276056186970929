"""The SDK's review, history, my-labels and members calls: method, path, body, and which ones are retried."""

from __future__ import annotations

from rewardhub.annotation_client import AnnotationClient, AsyncAnnotationClient, Calls

P = "/v1/annotation/projects/p1"


def test_review_calls_are_built_as_the_api_expects() -> None:
    review = Calls.reject("p1", "a1", comment="why")
    assert (review.method, review.path, review.body, review.replay_safe) == (
        "POST", f"{P}/annotations/a1/review", {"decision": "reject", "comment": "why"}, True)
    assert Calls.accept("p1", "a1").body == {"decision": "accept"}
    history = Calls.task_history("p1", "t1")
    assert (history.method, history.path, history.replay_safe) == ("GET", f"{P}/tasks/t1/history", True)
    mine = Calls.my_labels("p1", limit=5)
    assert (mine.method, mine.path, dict(mine.params)) == ("GET", f"{P}/my-labels", {"limit": 5})
    edit = Calls.edit_label("p1", "a1", {"topic": "b"})
    assert (edit.method, edit.path, edit.body, edit.replay_safe) == ("PUT", f"{P}/my-labels/a1",
                                                                     {"values": {"topic": "b"}}, True)
    assert Calls.edit_label("p1", "a1", ambiguous=True).body == {"kind": "ambiguous"}
    member = Calls.add_member("p1", username="olga")
    assert (member.method, member.path, member.body, member.replay_safe) == ("POST", f"{P}/members",
                                                                             {"username": "olga"}, True)
    removed = Calls.remove_member("p1", "u1")
    assert (removed.method, removed.path, removed.parse(None)) == ("DELETE", f"{P}/members/u1", None)


def test_both_clients_have_every_new_method() -> None:
    names = ["review_label", "accept", "reject", "task_history", "my_labels", "iter_my_labels", "my_label",
             "edit_label", "add_member", "remove_member"]
    for client in (AnnotationClient, AsyncAnnotationClient):
        assert all(callable(getattr(client, name)) for name in names), client
