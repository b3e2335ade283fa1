"""Debugging a recording with gdb: `cannoli gdbserver` (server.py) speaks gdb's
remote protocol (rsp.py framing, target_desc.py registers, xfer.py qXfer
objects) and reads the trace only through `History` (history.py)."""
