"""Consoles: serial ports, hubs, the boot-diagnostics log."""
