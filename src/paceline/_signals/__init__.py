"""Server signals, sans-I/O: header values in, numbers out. Public face: ``paceline.signals``."""
