"""The fairness rule on one snapshot: free slots must exceed the waiters ahead."""

from __future__ import annotations

from collet_limiter import ModelKey
from collet_limiter._fairness import Snapshot, ahead_of_each

A, B = ModelKey("p", "a"), ModelKey("p", "b")
QUEUE = [(1, A), (2, B), (3, A), (4, A)]


def snap(held: dict[ModelKey, int], ahead: dict[ModelKey, int], cap: int = 10) -> Snapshot:
    return Snapshot(limits={A: 2, B: 2}, held=held, ahead=ahead, cap=cap)


def test_ahead_of_each_counts_the_earlier_waiters_per_model() -> None:
    assert ahead_of_each(QUEUE, [1, 3, 4, 2]) == {
        1: {},
        2: {A: 1},
        3: {A: 1, B: 1},
        4: {A: 2, B: 1},
    }


def test_a_fresh_request_is_behind_every_waiter() -> None:
    assert not snap({A: 1}, {A: 1}).model_has_room(A)  # 1 free, 1 waiting
    assert snap({A: 1}, {}).model_has_room(A)  # the waiter itself gets it


def test_a_waiter_is_never_overtaken_by_a_later_one() -> None:
    ahead = ahead_of_each([(3, A), (7, A)], [3, 7])
    assert snap({A: 1}, ahead[3]).model_has_room(A)
    assert not snap({A: 1}, ahead[7]).model_has_room(A)


def test_two_free_slots_serve_the_first_two_waiters() -> None:
    ahead = ahead_of_each([(1, A), (2, A), (3, A)], [1, 2, 3])
    assert [snap({}, ahead[t]).model_has_room(A) for t in (1, 2, 3)] == [True, True, False]


def test_global_slots_go_to_the_oldest_waiters_whose_model_has_room() -> None:
    assert not snap({A: 1}, {B: 1}, cap=2).global_has_room()  # the last global slot is B's waiter's
    assert snap({A: 1}, {}, cap=2).global_has_room()  # which itself may take it


def test_a_waiter_whose_model_is_full_does_not_hold_back_global_slots() -> None:
    assert snap({A: 2}, {A: 1}, cap=3).global_has_room()


def test_only_as_many_waiters_of_a_model_as_it_has_free_slots_count_against_the_cap() -> None:
    s = snap({A: 1}, {A: 5}, cap=4)  # one of A's five waiters can go; two global slots remain
    assert s.global_waiters_ahead() == 1 and s.global_has_room()


def test_a_full_global_cap_admits_nobody() -> None:
    ok, reason = snap({A: 1, B: 1}, {}, cap=2).global_verdict()
    assert not ok and reason == "global cap full (2/2 held)"


def test_a_lowered_limit_leaves_no_room_until_holders_drain() -> None:
    s = Snapshot(limits={A: 1}, held={A: 3}, ahead={A: 2}, cap=10)
    assert s.free(A) == -2 and not s.model_has_room(A) and s.global_waiters_ahead() == 0


def test_admissible_wakes_exactly_the_waiters_a_claim_would_grant() -> None:
    from collet_limiter._fairness import admissible

    limits = {A: 2, B: 2}
    assert admissible(QUEUE, limits, {}, cap=10) == [1, 2, 3]  # A has 2 free: tickets 1 and 3
    assert admissible(QUEUE, limits, {A: 1}, cap=10) == [1, 2]
    assert admissible(QUEUE, limits, {}, cap=1) == [1]  # one global slot, to the oldest
    assert admissible(QUEUE, limits, {A: 2}, cap=3) == [2]  # A is full: B's waiter goes first
    for ticket in admissible(QUEUE, limits, {A: 1}, cap=3):
        counts = ahead_of_each(QUEUE, [ticket])[ticket]
        assert Snapshot(limits=limits, held={A: 1}, ahead=counts, cap=3).admits(dict(QUEUE)[ticket])
