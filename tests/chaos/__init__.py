"""Chaos suite: real faults (signals, Redis/Kafka restarts) against real worker processes."""
