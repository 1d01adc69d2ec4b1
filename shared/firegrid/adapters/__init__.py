"""Google Cloud adapters for the ports (the only code importing Google libraries)."""
