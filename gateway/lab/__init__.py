"""The lab: the lab file (``config``) and the runtime that starts and stops it all (``runtime``).

Only this package knows both machine kinds (QEMU and emulated); it builds the machines,
their boot logs and console hubs, the access services and the HTTP app, and owns their
lifetimes.
"""
