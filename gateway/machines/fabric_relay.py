"""One guest connection to Azure's wireserver or IMDS, carried to the lab's fabric.

QEMU's user network starts this (``guestfwd=...-cmd:``) for each TCP connection a
provisioned VM opens to 168.63.129.16:80 or 169.254.169.254:80, with the connection as its
standard input and output; it connects to 127.0.0.1:PORT (``gateway.machines.provision``'s
``Fabric``) and copies both ways until both sides end. Standard library only, run with
``python -I -S``: it starts in milliseconds and imports nothing of the lab.
"""

import os
import socket
import sys
import threading


def main() -> int:
    port = int(sys.argv[1])
    try:
        upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as err:
        print(f"fabric relay: cannot reach the lab's fabric on port {port}: {err}", file=sys.stderr)
        return 1
    upstream.settimeout(None)

    def guest_to_fabric() -> None:
        try:
            while data := os.read(0, 65536):
                upstream.sendall(data)
            upstream.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=guest_to_fabric, daemon=True).start()
    try:
        while data := upstream.recv(65536):
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
