"""Faces: the public ways in. Each builds a runner and shapes its results."""
