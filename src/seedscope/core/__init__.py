"""Foundations every stage shares: errors, atomic I/O, paths, provenance, statistics, configs, metrics, figures."""
