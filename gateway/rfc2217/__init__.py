"""RFC 2217 doors: a VM's console as a network serial port on loopback (see ``door``)."""
