"""The mmstar benchmark: its self-contained `evaluate` module (`mmstar.py`) and its loader."""
