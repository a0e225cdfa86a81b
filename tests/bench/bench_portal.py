"""The portal in Debian's Chromium: what a person waits for, measured in the page.

- first byte: from the start of the navigation to the console route (a full page load,
  signed in) to the guest's first byte drawn by xterm.js; median of ``LOADS`` loads;
- keystroke round trip: a key pressed in the page (Playwright's keyboard, a real key
  event), sent over the websocket, echoed by the guest's shell, received by the page: the
  page's own clock, from xterm.js handing the key over to the echo's frame arriving;
  p50 and p99 over ``KEYS`` keys, one at a time;
- the same round trip from script on the pane's socket (no key event, no terminal
  drawing on the page's thread): what the browser's websocket itself costs;
- page weight: the bytes of the page and every file it loads (the Resource Timing
  entries; the gateway sends them uncompressed), and the portal's built files.

The guest is an emulated Linux guest of a lab in this process. ``python -m tests.bench``
runs it with the other benchmarks; alone: ``python -m tests.bench.bench_portal [KEYS]``.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from gateway.lab.config import parse_lab
from gateway.portal import DIST
from tests.support.lab import SUBSCRIPTION, lab_toml, serve_lab

KEYS = 200
LOADS = 5
ROUTE = (
    f"/#/resource/subscriptions/{SUBSCRIPTION}/resourceGroups/lab-rg"
    "/providers/Microsoft.Compute/virtualMachines/linux-1/serialConsole"
)
TEXT = "window.portal?.console?.text() ?? ''"
# The same round trip on the pane's socket with no key event and no terminal in between:
# a byte sent from script, the echo's frame awaited.
DIRECT = """async (keys) => {
    const socket = window.portal.console.socket;
    const out = [];
    for (let i = 0; i < keys; i++) {
        const start = performance.now();
        await new Promise((done) => {
            const echo = (event) => {
                if (typeof event.data === "string") return;
                socket.removeEventListener("message", echo);
                done();
            };
            socket.addEventListener("message", echo);
            socket.send(new TextEncoder().encode("a"));
        });
        out.push(performance.now() - start);
    }
    return out;
}"""


async def measure(keys: int, vms: str | None = None) -> dict[str, object]:
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Chromium is missing: apt-get install chromium")
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        text = lab_toml(base / "state") if vms is None else lab_toml(base / "state", vms=vms)
        config = parse_lab(text, source="lab.toml", base=base)
        async with serve_lab(config) as lab, async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium)
            page = await browser.new_page()
            await page.goto(lab.url + "/")
            await page.get_by_label("Username").fill("alice")
            await page.get_by_label("Password").fill("alice")
            await page.get_by_role("button", name="Sign in").click()
            await page.get_by_role("button", name="Sign out").wait_for()
            first: list[float] = []
            for _ in range(LOADS):
                await page.goto("about:blank")
                await page.goto(lab.url + ROUTE)
                await page.wait_for_function(
                    "() => window.portal?.console?.metrics.firstByteSinceNavigation != null"
                )
                first.append(
                    await page.evaluate("window.portal.console.metrics.firstByteSinceNavigation")
                )
            loaded = await page.evaluate(
                "performance.getEntries().reduce((n, e) => n + (e.encodedBodySize ?? 0), 0)"
            )
            await page.locator(".xterm-helper-textarea").focus()
            await page.keyboard.press("Enter")
            await page.wait_for_function(f"() => /login: $/.test({TEXT})", timeout=120_000)
            await page.keyboard.type("root\n")
            await page.wait_for_function(f"() => /Password: $/.test({TEXT})")
            await page.keyboard.type("serial-lab\n")
            await page.wait_for_function(f"() => /# $/.test({TEXT})")
            await page.evaluate("window.portal.console.metrics.roundTrips = []")
            for i in range(keys):
                await page.keyboard.press("a")
                await page.wait_for_function(
                    f"() => window.portal.console.metrics.roundTrips.length > {i}"
                )
            trips = sorted(await page.evaluate("window.portal.console.metrics.roundTrips"))
            bare = sorted(await page.evaluate(DIRECT, keys))
            await browser.close()
    built = {p.name: p.stat().st_size for p in DIST.iterdir() if p.suffix in {".js", ".css"}}
    return {"first": first, "trips": trips, "bare": bare, "loaded": loaded, "built": built}


def main(keys: int = KEYS) -> None:
    result = asyncio.run(measure(keys))
    first = result["first"]
    trips = result["trips"]
    assert isinstance(first, list)
    assert isinstance(trips, list)
    bare = result["bare"]
    assert isinstance(bare, list)

    def p99(values: list[float]) -> float:
        return values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]

    built = result["built"]
    assert isinstance(built, dict)
    rows = [
        (f"navigation to the first byte on screen (median of {LOADS})",
         f"{statistics.median(first):.0f} ms"),
        (f"keystroke round trip in the page, p50 ({len(trips)} keys)",
         f"{statistics.median(trips):.1f} ms"),
        ("keystroke round trip in the page, p99", f"{p99(trips):.1f} ms"),
        ("  the same byte sent from script on the pane's socket, p50 / p99",
         f"{statistics.median(bare):.1f} / {p99(bare):.1f} ms"),
        ("what the console route loads (uncompressed)",
         f"{int(result['loaded']) / 1024:.0f} KiB"),  # type: ignore[call-overload]
        *((f"  built {name}", f"{size / 1024:.0f} KiB") for name, size in sorted(built.items())),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print("\nThe portal in Chromium (emulated Linux guest, its shell echoing)")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else KEYS)
