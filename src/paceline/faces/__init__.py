"""Faces: the public ways in. Each builds a runner and shapes its results.

Users import them from :mod:`paceline` (``paceline.batch_execute``, ``paceline.BatchExecutor``
...); these modules are paceline's own, public to its other packages (the HTTP face, the CLI).
"""
