"""Data: text corpora and tokenizers (text.py), synthetic tasks (synthetic.py),
Markov-chain corpora with a known entropy rate (markov.py)."""
