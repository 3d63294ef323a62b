"""Policy: pure state machines that decide. Integers in (time in ns, counts), decisions out.

Nothing in this package sleeps, reads a clock, or touches a thread or an event loop.
"""
