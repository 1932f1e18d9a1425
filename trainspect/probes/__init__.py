"""Probes: diagnostics with fixed-size device state, a cheap update and a compute at flush."""
