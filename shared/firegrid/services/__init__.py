"""Use cases: each takes a Context (the ports) and plain request data."""
