"""The texts of the emulated Linux guest, as the lab's real QEMU guest prints them.

Kernel 6.1 (Debian's cloud kernel, the one ``images/`` boots), busybox init, getty, login
and sh. Boot lines carry fixed, believable timestamps; later kernel messages are stamped
with the guest's uptime (see ``kernel_line``).
"""

from __future__ import annotations

KERNEL_RELEASE = "6.1.0-56-cloud-amd64"
KERNEL_BUILD = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)"
LINUX_VERSION = (
    f"Linux version {KERNEL_RELEASE} (debian-kernel@lists.debian.org) "
    "(gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) "
    f"{KERNEL_BUILD}"
)
HARDWARE_NAME = "QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian-1.16.2-1 04/01/2014"


def cmdline(hostname: str) -> str:
    return f"console=ttyS0,115200 panic=-1 lab.hostname={hostname}"


# (uptime, text) of the kernel's boot up to init; ``{cmdline}`` is filled in per guest.
KERNEL_BOOT: tuple[tuple[float, str], ...] = (
    (0.0, LINUX_VERSION),
    (0.0, "Command line: {cmdline}"),
    (0.0, "BIOS-provided physical RAM map:"),
    (0.0, "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable"),
    (0.0, "BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved"),
    (0.0, "BIOS-e820: [mem 0x00000000000f0000-0x00000000000fffff] reserved"),
    (0.0, "BIOS-e820: [mem 0x0000000000100000-0x0000000007fdefff] usable"),
    (0.0, "BIOS-e820: [mem 0x0000000007fdf000-0x0000000007ffffff] reserved"),
    (0.0, "NX (Execute Disable) protection: active"),
    (0.0, "SMBIOS 2.8 present."),
    (0.0, f"DMI: {HARDWARE_NAME}"),
    (0.0, "tsc: Fast TSC calibration using PIT"),
    (0.0, "tsc: Detected 2294.608 MHz processor"),
    (0.0, "last_pfn = 0x7fdf max_arch_pfn = 0x400000000"),
    (0.0, "ACPI: Early table checksum verification disabled"),
    (0.0, "Zone ranges:"),
    (0.0, "  DMA      [mem 0x0000000000001000-0x0000000000ffffff]"),
    (0.0, "  DMA32    [mem 0x0000000001000000-0x0000000007fdefff]"),
    (0.0, "Kernel command line: {cmdline}"),
    (0.0, "Memory: 98304K/130556K available (12288K kernel code, 2143K rwdata)"),
    (0.0, "SLUB: HWalign=64, Order=0-3, MinObjects=0, CPUs=1, Nodes=1"),
    (0.0, "rcu: Preemptible hierarchical RCU implementation."),
    (0.0, "NR_IRQS: 524544, nr_irqs: 256, preallocated irqs: 16"),
    (0.0, "Console: colour dummy device 80x25"),
    (0.0, "printk: console [ttyS0] enabled"),
    (0.0, "ACPI: Core revision 20220331"),
    (0.004000, "APIC: Switch to symmetric I/O mode setup"),
    (0.112345, "Calibrating delay loop (skipped), value calculated using timer frequency.."),
    (0.116000, "smpboot: CPU0: Intel Core Processor (Haswell, no TSX) (family: 0x6, model: 0x3c)"),
    (0.121234, "smp: Bringing up secondary CPUs ..."),
    (0.121240, "smp: Brought up 1 node, 1 CPU"),
    (0.164402, "devtmpfs: initialized"),
    (0.201118, "ACPI: Interpreter enabled"),
    (0.211276, "PCI host bridge to bus 0000:00"),
    (0.343981, "clocksource: Switched to clocksource tsc-early"),
    (0.398541, "Serial: 8250/16550 driver, 4 ports, IRQ sharing enabled"),
    (0.399873, "serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A"),
    (0.413520, "Unpacking initramfs..."),
    (0.466723, "Freeing initrd memory: 2080K"),
    (0.512004, "sched_clock: Marking stable (501233417, 10733284)->(520417214, -8450513)"),
    (0.563210, "Freeing unused kernel image (initmem) memory: 2740K"),
    (0.571002, "Write protecting the kernel read-only data: 26624k"),
    (0.589154, "Run /init as init process"),
)
KERNEL_BOOT_SECONDS = 0.589154

# What busybox init's rcS prints once the kernel handed over (after the boot delay).
INIT_LINES = ("lab guest {hostname} is up",)
INIT_SECONDS = 0.75

SYSRQ_HELP = (
    "HELP : loglevel(0-9) reboot(b) crash(c) terminate-all-tasks(e) memory-full-oom-kill(f) "
    "kill-all-tasks(i) thaw-filesystems(j) sak(k) show-backtrace-all-active-cpus(l) "
    "show-memory-usage(m) nice-all-RT-tasks(n) poweroff(o) show-registers(p) "
    "show-all-timers(q) unraw(r) sync(s) show-task-states(t) unmount(u) force-fb(v) "
    "show-blocked-tasks(w) dump-ftrace-buffer(z) "
)

# kernel.sysrq bits (Documentation/admin-guide/sysrq.rst)
SYSRQ_ENABLE_LOG = 0x2
SYSRQ_ENABLE_KEYBOARD = 0x4
SYSRQ_ENABLE_DUMP = 0x8
SYSRQ_ENABLE_SYNC = 0x10
SYSRQ_ENABLE_REMOUNT = 0x20
SYSRQ_ENABLE_SIGNAL = 0x40
SYSRQ_ENABLE_BOOT = 0x80
SYSRQ_ENABLE_RTNICE = 0x100

# key -> (action message, enable mask, extra lines printed after the action)
SYSRQ_OPS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "b": ("Resetting", SYSRQ_ENABLE_BOOT, ()),
    "c": ("Trigger a crash", SYSRQ_ENABLE_DUMP, ()),
    "e": ("Terminate All Tasks", SYSRQ_ENABLE_SIGNAL, ()),
    "f": ("Manual OOM execution", SYSRQ_ENABLE_SIGNAL, ()),
    "i": ("Kill All Tasks", SYSRQ_ENABLE_SIGNAL, ()),
    "j": ("Emergency Thaw of all frozen filesystems", SYSRQ_ENABLE_SIGNAL, ()),
    "k": ("SAK", SYSRQ_ENABLE_KEYBOARD, ()),
    "l": (
        "Show backtrace of all active CPUs",
        SYSRQ_ENABLE_DUMP,
        ("NMI backtrace for cpu 0",),
    ),
    "m": (
        "Show Memory",
        SYSRQ_ENABLE_DUMP,
        (
            "Mem-Info:",
            "active_anon:112 inactive_anon:1843 isolated_anon:0",
            "free:24385 free_pcp:51 free_cma:0",
            "32619 pages RAM",
        ),
    ),
    "n": ("Nice All RT Tasks", SYSRQ_ENABLE_RTNICE, ()),
    "o": ("Power Off", SYSRQ_ENABLE_BOOT, ()),
    "p": ("Show Regs", SYSRQ_ENABLE_DUMP, ("CPU: 0 PID: 0 Comm: swapper/0 Not tainted",)),
    "q": (
        "Show clockevent devices & pending hrtimers (no others)",
        SYSRQ_ENABLE_DUMP,
        ("Timer List Version: v0.9",),
    ),
    "r": ("Keyboard mode set to system default", SYSRQ_ENABLE_KEYBOARD, ()),
    "s": ("Emergency Sync", SYSRQ_ENABLE_SYNC, ("Emergency Sync complete",)),
    "t": (
        "Show State",
        SYSRQ_ENABLE_DUMP,
        (
            "task:init            state:S stack:0     pid:1     ppid:0      flags:0x00000002",
            "task:sh              state:S stack:0     pid:71    ppid:1      flags:0x00000002",
        ),
    ),
    "u": ("Emergency Remount R/O", SYSRQ_ENABLE_REMOUNT, ("Emergency Remount complete",)),
    "v": ("Restore framebuffer console", SYSRQ_ENABLE_DUMP, ()),
    "w": ("Show Blocked State", SYSRQ_ENABLE_DUMP, ()),
    "z": (
        "Dump ftrace buffer",
        SYSRQ_ENABLE_DUMP,
        ("Dumping ftrace buffer:", "   (ftrace buffer empty)"),
    ),
}
SYSRQ_LOGLEVEL = ("Changing Loglevel", SYSRQ_ENABLE_LOG)
SYSRQ_DISABLED = "This sysrq operation is disabled."


def panic_lines(reason: str, comm: str, stack: tuple[str, ...]) -> list[str]:
    """The console lines of ``panic(reason)`` up to the pvpanic notifier (QEMU pauses there)."""
    return [
        f"Kernel panic - not syncing: {reason}",
        f"CPU: 0 PID: {71 if comm == 'sh' else 0} Comm: {comm} Not tainted "
        f"{KERNEL_RELEASE} #1  Debian 6.1.192-2",
        f"Hardware name: {HARDWARE_NAME}",
        "Call Trace:",
        " <TASK>",
        " dump_stack_lvl+0x44/0x5c",
        " panic+0x118/0x2ed",
        *stack,
        " </TASK>",
    ]


SYSRQ_CRASH_STACK = (
    " sysrq_handle_crash+0x16/0x20",
    " __handle_sysrq.cold+0x43/0x11b",
    " serial8250_handle_irq+0x1e4/0x1f0",
    " serial8250_default_handle_irq+0x3e/0x80",
    " serial8250_interrupt+0x56/0x90",
)
NMI_PANIC_STACK = (
    " nmi_panic.cold+0xc/0xc",
    " unknown_nmi_error.cold+0x3a/0x3f",
    " default_do_nmi+0x112/0x120",
    " exc_nmi+0x130/0x1a0",
)

NMI_UNKNOWN = "Uhhuh. NMI received for unknown reason 30 on CPU 0."
NMI_DAZED = "Dazed and confused, but trying to continue"
NMI_PANIC_REASON = "NMI: Not continuing"

SHUTDOWN_LINES = (
    "The system is going down NOW!",
    "Sent SIGTERM to all processes",
    "Sent SIGKILL to all processes",
)
REBOOT_REQUEST = "Requesting system reboot"
POWEROFF_REQUEST = "Requesting system poweroff"
REBOOT_KERNEL = "reboot: Restarting system"
POWEROFF_KERNEL = "reboot: Power down"
ACPI_POWER_BUTTON = "ACPI: button: Power Button [PWRF]"

SYSCTL_DEFAULTS: dict[str, str] = {
    "kernel.sysrq": "1",
    "kernel.unknown_nmi_panic": "0",
    "kernel.panic_on_unrecovered_nmi": "0",
    "kernel.panic": "-1",
    "kernel.printk": "7\t4\t1\t7",
    "kernel.ostype": "Linux",
    "kernel.osrelease": KERNEL_RELEASE,
}
