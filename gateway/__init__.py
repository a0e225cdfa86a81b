"""Serial Console Lab's gateway: machines, consoles, access control and the doors to them."""
