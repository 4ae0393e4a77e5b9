"""Memory planning: what a run holds per rank before anything loads (`tuneforge plan`), and the measured peak
it is checked against (measure.py)."""
