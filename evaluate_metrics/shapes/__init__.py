"""The shapes benchmark: its self-contained `evaluate` module (`shapes.py`) and its loader."""
