"""The device side: a protocol client (HTTP only, no server internals) and plan training."""
