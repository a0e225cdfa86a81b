"""The SSH door onto the lab's consoles (``ssh -p PORT alice+lab-rg+linux-1@host``)."""
