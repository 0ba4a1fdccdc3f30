"""PEFT's own test suite run as the conformance suite of SOFT_PROMPT (see run.py)."""
