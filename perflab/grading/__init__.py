"""Grading: the grader engine (``grader``) and the contracts it owns (``contracts``: the speed-contract shape
every lab shares). Engine code: it finds a lab's checks by name (``perflab/topics/tNN_*/checks.py``) and never
imports a topic."""
