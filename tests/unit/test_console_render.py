"""The one renderer of session items for text doors (SSH, RFC 2217, raw websocket)."""

from __future__ import annotations

from gateway.console import texts
from gateway.console.render import line_of
from gateway.console.sessions import Event, Gap, IdleWarning, Notice, Power, Resumed, TakenOver


def test_each_item_a_terminal_shows_is_one_line_of_text() -> None:
    assert line_of(Notice("nmi", "NMI refused: read-only")) == "NMI refused: read-only"
    assert line_of(IdleWarning(30)) == texts.idle_warning(30)
    assert line_of(Gap(0, 100)) == texts.gone(0, 100)
    assert line_of(Power("running", "reset", "hard reset")) == "[VM reset: hard reset]"
    assert line_of(Power("stopped", "state", "")) == "[VM state: stopped]"
    assert line_of(Resumed(5, 9, True)) == "[bytes before 9 are gone from the boot log]"


def test_items_with_nothing_for_a_terminal_show_nothing() -> None:
    assert line_of(Event('{"type": "x"}')) is None  # framed clients' JSON
    assert line_of(TakenOver("carol")) is None  # its close text follows
    assert line_of(Resumed(5, 5, False)) is None  # nothing was lost
