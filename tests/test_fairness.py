"""The fairness rule on one snapshot: free slots must exceed the waiters ahead."""

from __future__ import annotations

from collet_limiter import ModelKey
from collet_limiter._fairness import Snapshot

A, B = ModelKey("p", "a"), ModelKey("p", "b")


def snap(held: dict[ModelKey, int], queue: list[tuple[int, ModelKey]], cap: int = 10) -> Snapshot:
    return Snapshot(limits={A: 2, B: 2}, held=held, queue=queue, cap=cap)


def test_a_fresh_request_is_behind_every_waiter() -> None:
    s = snap({A: 1}, [(5, A)])
    assert not s.model_has_room(A, None)  # 1 free, 1 waiting
    assert s.model_has_room(A, 5)  # the waiter itself gets it


def test_a_waiter_is_never_overtaken_by_a_later_one() -> None:
    s = snap({A: 1}, [(3, A), (7, A)])
    assert s.model_has_room(A, 3)
    assert not s.model_has_room(A, 7)


def test_two_free_slots_serve_the_first_two_waiters() -> None:
    s = snap({}, [(1, A), (2, A), (3, A)])
    assert [s.model_has_room(A, t) for t in (1, 2, 3)] == [True, True, False]


def test_global_slots_go_to_the_oldest_waiters_whose_model_has_room() -> None:
    s = snap({A: 1}, [(1, B)], cap=2)
    assert not s.global_has_room(None)  # the last global slot is the waiter's
    assert s.global_has_room(1)


def test_a_waiter_whose_model_is_full_does_not_hold_back_global_slots() -> None:
    s = snap({A: 2}, [(1, A)], cap=3)
    assert s.global_has_room(None)


def test_a_full_global_cap_admits_nobody() -> None:
    s = snap({A: 1, B: 1}, [], cap=2)
    ok, reason = s.global_verdict(None)
    assert not ok and reason == "global cap full (2/2 held)"


def test_a_lowered_limit_leaves_no_room_until_holders_drain() -> None:
    s = Snapshot(limits={A: 1}, held={A: 3}, queue=[], cap=10)
    assert s.free(A) == -2 and not s.model_has_room(A, None)
