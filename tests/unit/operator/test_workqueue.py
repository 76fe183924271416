"""The work queue and the rate limits: dedup, per-key serialisation, backoff, delays, budgets.

The clock is injected and every `get` is non-blocking, so no outcome depends on timing.
"""

from __future__ import annotations

import threading

import pytest

from finetune_operator.ratelimit import CRITICAL, LOW, NORMAL, PriorityTokenBucket, TokenBucket, WriteBudget
from localcluster.waiting import until
from finetune_operator.workqueue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def drain(queue: WorkQueue[str]) -> list[str]:
    out = []
    while (key := queue.get(timeout=0)) is not None:
        out.append(key)
        queue.done(key)
    return out


def test_keys_are_deduplicated(clock: Clock) -> None:
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    for key in ("a", "b", "a", "a", "b"):
        queue.add(key)
    assert len(queue) == 2
    assert drain(queue) == ["a", "b"]
    assert queue.stats.adds == 2


def test_a_key_in_progress_is_never_handed_out_twice(clock: Clock) -> None:
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add("a")
    first = queue.get(timeout=0)
    assert first == "a"
    queue.add("a")  # an event while the reconcile runs
    assert queue.get(timeout=0) is None  # not to a second worker
    queue.done("a")
    assert queue.get(timeout=0) == "a"  # but reconciled again afterwards
    queue.done("a")
    assert queue.get(timeout=0) is None


def test_urgent_keys_overtake_routine_ones(clock: Clock) -> None:
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add("progress-1")
    queue.add("progress-2")
    queue.add("phase-change", urgent=True)
    queue.add("progress-2", urgent=True)  # upgraded in place, not queued twice
    assert drain(queue) == ["phase-change", "progress-2", "progress-1"]


def test_failures_back_off_exponentially_and_forget_resets(clock: Clock) -> None:
    queue: WorkQueue[str] = WorkQueue(clock=clock, base_delay=0.5, max_delay=4.0)
    delays = []
    for _ in range(5):
        delays.append(queue.retry("a"))
        clock.now += delays[-1] - 0.01
        assert queue.get(timeout=0) is None  # not before its time
        clock.now += 0.01
        assert queue.get(timeout=0) == "a"
        queue.done("a")
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert queue.stats.retries == 5
    queue.forget("a")
    assert queue.retry("a") == 0.5


def test_delayed_keys_wait_unless_an_urgent_add_comes(clock: Clock) -> None:
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("a", 10)
    queue.add("a")  # a routine event does not pull the delayed key forward
    assert queue.get(timeout=0) is None and queue.waiting() == 1
    queue.add("a", urgent=True)
    assert queue.get(timeout=0) == "a"
    queue.done("a")
    clock.now += 20
    assert queue.get(timeout=0) is None  # the superseded delay does not fire again
    queue.add_after("b", 5)
    queue.add_after("b", 2)  # the earlier time wins
    clock.now += 2
    assert queue.get(timeout=0) == "b"


def test_queue_wait_counts_from_when_a_key_became_ready(clock: Clock) -> None:
    seen: list[float] = []
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.stats.on_wait = seen.append
    queue.add("a")
    clock.now += 3
    queue.add("a")  # a duplicate add does not restart the wait
    queue.add("a", urgent=True)  # nor does promoting it to the front
    clock.now += 1
    assert queue.get(timeout=0) == "a"
    queue.done("a")
    queue.add_after("b", 10)  # the delay is not queue wait: the key was not ready yet
    clock.now += 10
    assert queue.get(timeout=0) == "b"
    queue.done("b")
    assert seen == [4.0, 0.0]
    assert queue.stats.waits == 2 and queue.stats.wait_seconds == 4.0


def test_token_bucket_allows_a_burst_then_the_rate(clock: Clock) -> None:
    slept: list[float] = []
    bucket = TokenBucket(rate=10, burst=3, clock=clock, sleep=slept.append)
    waits = [bucket.acquire() for _ in range(5)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3] == pytest.approx(0.1) and waits[4] == pytest.approx(0.2)
    assert slept == pytest.approx([0.1, 0.2])
    clock.now += 10  # idle time refills only up to the burst
    assert [bucket.acquire() for _ in range(3)] == [0, 0, 0]
    assert bucket.acquire() > 0


def test_priority_bucket_allows_a_burst_then_waits(clock: Clock) -> None:
    bucket = PriorityTokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.acquire(LOW) for _ in range(3)] == [0, 0, 0]
    clock.now += 0.1  # one token back
    assert bucket.acquire(NORMAL) == 0
    clock.now += 10  # idle time refills only up to the burst
    assert [bucket.acquire() for _ in range(3)] == [0, 0, 0]
    assert bucket.waiting() == 0
    with pytest.raises(ValueError):
        PriorityTokenBucket(rate=0, burst=1)


def test_priority_bucket_serves_critical_before_waiting_low_requests(clock: Clock) -> None:
    """The clock stands still, so nobody gets a token until the test hands one out."""
    bucket = PriorityTokenBucket(rate=10, burst=1, clock=clock)
    bucket.acquire()  # the bucket is empty now
    served: list[str] = []
    lock = threading.Lock()

    def request(name: str, level: int) -> None:
        bucket.acquire(level)
        with lock:
            served.append(name)

    threads = []
    for name, level in (("low-1", LOW), ("low-2", LOW), ("normal", NORMAL), ("critical", CRITICAL)):
        thread = threading.Thread(target=request, args=(name, level), daemon=True)
        thread.start()
        threads.append(thread)
        count = len(threads)
        until(lambda n=count: bucket.waiting() == n, 10, f"{count} requests waiting", interval=0.01)
    for n in range(1, 5):
        clock.now += 0.1  # exactly one more token
        bucket.wake()
        until(lambda n=n: len(served) == n, 10, f"{n} requests served", interval=0.01)
        assert bucket.waiting() == 4 - n  # one token, one request: never two
    for thread in threads:
        thread.join(timeout=10)
    assert served == ["critical", "normal", "low-1", "low-2"]  # by priority, then first come first served


def test_write_budget_per_job_interval(clock: Clock) -> None:
    budget = WriteBudget(per_key_seconds=10, rate=100, clock=clock)
    assert budget.admit("a") == 0
    clock.now += 4
    assert budget.admit("a") == pytest.approx(6)
    clock.now += 6
    assert budget.admit("a") == 0
    budget.record("a")  # an urgent write restarts the interval
    clock.now += 1
    assert budget.admit("a") == pytest.approx(9)


def test_write_budget_spreads_many_jobs_over_the_global_rate(clock: Clock) -> None:
    budget = WriteBudget(per_key_seconds=10, rate=2, burst=1, clock=clock)
    waits = [budget.admit(f"job-{i}") for i in range(6)]
    assert waits == pytest.approx([0, 0.5, 1.0, 1.5, 2.0, 2.5])  # reserved slots, no herd
    clock.now += 1.0
    assert budget.admit("job-2") == 0  # its slot has come: it writes without a new reservation
    assert budget.admit("job-5") == pytest.approx(1.5)  # still holding its slot


def test_write_budget_deferral_tells_when_to_come_back_without_taking_a_slot(clock: Clock) -> None:
    budget = WriteBudget(per_key_seconds=10, rate=1, burst=1, clock=clock)
    assert budget.deferral("a") == 0  # never wrote: may ask now
    assert budget.admit("a") == 0
    clock.now += 3
    assert budget.deferral("a") == pytest.approx(7)
    assert budget.admit("b") == pytest.approx(0)  # the deferral of "a" reserved nothing
    assert budget.admit("c") == pytest.approx(1)  # "c" holds the next slot ...
    assert budget.deferral("c") == pytest.approx(1)  # ... and is told to come back for it
    clock.now += 7
    assert budget.deferral("a") == 0


@pytest.mark.parametrize("jobs", [100, 300])
def test_with_many_running_jobs_every_progress_write_shows_within_the_budgets_round(clock: Clock, jobs: int) -> None:
    """The queue and the budget together, as the controller drives them: each trainer writes every 5 s,
    the write enqueues its job, a deferred job waits in the queue for its slot. Every write must show
    within max(N, jobs ÷ P) seconds (plus the clock's tick), and none may be skipped for good."""
    per_key, rate, period, tick = 10.0, 10.0, 5.0, 0.05
    queue: WorkQueue[int] = WorkQueue(clock=clock)
    budget = WriteBudget(per_key_seconds=per_key, rate=rate, clock=clock)
    start = clock.now
    next_write = {j: start + period * j / jobs for j in range(jobs)}  # phases spread over one period
    written: dict[int, list[float]] = {j: [] for j in range(jobs)}  # acknowledgement time of each step
    shown = dict.fromkeys(range(jobs), 0)
    lags: list[float] = []
    while clock.now < start + 120:
        for j, t in next_write.items():
            if t <= clock.now:
                written[j].append(t)
                next_write[j] = t + period
                queue.add_after(j, budget.deferral(j))  # a progress ConfigMap event, as the controller queues it
        while (j := queue.get(timeout=0)) is not None:
            if shown[j] < len(written[j]):
                wait = budget.admit(j)
                if wait > 0:
                    queue.add_after(j, wait)
                else:
                    lags += [clock.now - t for t in written[j][shown[j]:]]
                    shown[j] = len(written[j])
            queue.done(j)
        clock.now += tick
    bound = max(per_key, jobs / rate)
    unshown = [t for j in range(jobs) for t in written[j][shown[j]:]]
    assert min(unshown, default=clock.now) >= clock.now - bound - 2 * tick  # only the last round still waits
    assert max(lags) <= bound + 2 * tick
    assert sorted(lags)[len(lags) // 2] >= bound / 4  # the budget does hold writes back: not a vacuous pass
