"""A worker's admission: a burst is queued while the queue can serve it within the first-token
deadline; what can't be served in time (or passes the count cap) is refused with a Retry-After."""

from __future__ import annotations

import pytest

from shared.errors import OverloadedError
from shared.settings import DEFAULTS
from worker.model.admission import Admission


def default_admission() -> Admission:
    return Admission(
        "m",
        max_pending=DEFAULTS.max_batch + DEFAULTS.max_queue,
        max_batch=DEFAULTS.max_batch,
        max_wait_s=DEFAULTS.first_token_timeout_s,
    )


def test_a_burst_of_200_is_queued_by_default() -> None:
    places = default_admission()
    for _ in range(200):
        places.take(None)
    assert places.pending == 200


def test_requests_that_would_wait_past_the_deadline_are_refused_with_retry_after() -> None:
    places = Admission("m", max_pending=10_000, max_batch=4, max_wait_s=20.0)
    for _ in range(30):  # requests here take 10 s each: 4 run, 4 more start in 10 s, 4 in 20 s
        places.take(None)
        places.done(10.0, None)
    for _ in range(12):
        places.take(None)
    assert places.wait_s(12) <= 20.0 < places.wait_s(13)
    with pytest.raises(OverloadedError) as caught:
        places.take(None)
    assert caught.value.retry_after is not None and caught.value.retry_after >= 9
    with pytest.raises(OverloadedError):
        places.admit(2)  # a group too
    places.done(10.0, None)  # one finished: one more fits in time
    places.take(None)


def test_the_count_cap_still_holds() -> None:
    places = Admission("m", max_pending=3, max_batch=1, max_wait_s=1e9)
    for _ in range(3):
        places.take(None)
    with pytest.raises(OverloadedError):
        places.take(None)
