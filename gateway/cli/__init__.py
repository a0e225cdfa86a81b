"""The ``serial-console`` command: ``main.main()`` dispatches to subcommand modules.

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``func`` (``args -> exit code``); ``main.COMMANDS`` lists them. Client
commands talk to the gateway over HTTP and websockets; only ``lab run`` imports the runtime.
"""
