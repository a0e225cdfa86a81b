"""When the SSH door offers the ``stty`` hint: at connect, on a resize, at most once a
second, never twice for one size. A fake clock: ``now`` is passed in."""

from __future__ import annotations

from gateway.ssh.size import SizeHints, hint


def test_the_pty_requests_size_is_offered_at_once() -> None:
    hints = SizeHints()
    assert hints.opened(200, 40, now=0.0) == hint(200, 40)
    assert "run 'stty rows 40 cols 200' in the guest" in hint(200, 40)


def test_a_client_that_sent_no_size_is_offered_nothing() -> None:
    hints = SizeHints()
    assert hints.opened(0, 0, now=0.0) is None
    assert hints.changed(0, 24, now=5.0) is None


def test_a_resize_is_offered_at_once_when_the_last_hint_is_old() -> None:
    hints = SizeHints()
    hints.opened(200, 40, now=0.0)
    shown = hints.changed(120, 30, now=5.0)
    assert shown == hint(120, 30, changed=True)
    assert "Your terminal is now 30 rows by 120 columns" in str(shown)
    assert hints.due is None


def test_the_same_size_again_is_not_offered_again() -> None:
    hints = SizeHints()
    hints.opened(200, 40, now=0.0)
    assert hints.changed(200, 40, now=5.0) is None
    assert hints.due is None


def test_a_burst_of_resizes_gives_one_hint_a_second_with_the_last_size() -> None:
    """Dragging a corner: the first size at once, then the burst held; the last size of
    the burst is shown when a second has passed since the first hint."""
    hints = SizeHints()
    assert hints.changed(100, 30, now=10.0) == hint(100, 30, changed=True)
    assert hints.changed(101, 30, now=10.2) is None
    assert hints.changed(102, 31, now=10.4) is None
    assert hints.due == 11.0
    assert hints.flush(now=11.0) == hint(102, 31, changed=True)
    assert hints.due is None
    assert hints.flush(now=11.5) is None


def test_a_burst_that_ends_where_it_started_shows_nothing_more() -> None:
    hints = SizeHints()
    hints.changed(100, 30, now=10.0)
    hints.changed(90, 30, now=10.2)
    assert hints.changed(100, 30, now=10.4) is None
    assert hints.due is None
    assert hints.flush(now=11.0) is None


def test_a_resize_after_a_late_flush_is_shown_at_once() -> None:
    hints = SizeHints()
    hints.changed(100, 30, now=10.0)
    hints.changed(101, 30, now=10.5)
    assert hints.changed(102, 30, now=12.0) == hint(102, 30, changed=True)
    assert hints.due is None
