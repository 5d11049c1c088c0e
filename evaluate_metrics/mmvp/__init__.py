"""The mmvp benchmark: its self-contained `evaluate` module (`mmvp.py`) and its loader."""
