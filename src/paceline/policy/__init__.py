"""Policy: pure state machines that decide. Integers in (time in ns, counts), decisions out.

Nothing in this package sleeps, reads a clock, or touches a thread or an event loop
(``tests/test_layering.py`` checks it). Its modules are public to paceline's other packages;
users get what they need from :mod:`paceline` (``RateLimiter``, ``RetryPolicy``, ``HaltRule``,
``AdaptiveSettings``...).
"""
