"""Training: THE loop (``loop.py``) and what it owns: checkpoints (``checkpoint.py``),
metric writers (``writers.py``)."""


def __getattr__(name):  # transitional: the language-model loop while the one loop replaces it
    from rnnlab import train_lm_old

    return getattr(train_lm_old, name)
