"""The plugin's patterns read a guest's console around the kernel's lines."""

from __future__ import annotations

import re

from gateway.testing import AT_END, echoed, without_kernel_lines

KERNEL = b"[   12.345678] sysrq: HELP : loglevel(0-9)\r\n"


def test_a_prompt_followed_only_by_kernel_lines_is_at_the_end() -> None:
    pattern = re.compile(("login: " + AT_END).encode())
    assert pattern.search(b"linux-1 login: ")
    assert pattern.search(b"linux-1 login: " + KERNEL + KERNEL)
    assert not pattern.search(b"linux-1 login: root\r\n")


def test_an_echo_is_found_with_a_kernel_line_between_its_letters() -> None:
    shown = b"# ec" + KERNEL + b"ho hi\r\n"
    assert re.search(echoed("echo hi").encode(), shown)
    assert not re.search(echoed("echo ho").encode(), shown)


def test_output_without_kernel_lines() -> None:
    assert without_kernel_lines(b"one\r\n" + KERNEL + b"two\r\n") == "one\r\ntwo\r\n"
