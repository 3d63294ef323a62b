"""Runners: where the waiting happens. They drive the policy objects with real time, threads
and event loops, and never decide anything the policy layer can decide."""
