"""CLI commands, one module each, registered by edgedf.cli."""
