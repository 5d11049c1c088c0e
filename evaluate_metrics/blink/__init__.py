"""The blink benchmark: its self-contained `evaluate` module (`blink.py`) and its loader."""
