"""Models built on recurrent stacks: language model (lm.py)."""
