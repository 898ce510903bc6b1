"""Data, every batch a pure function of (seed, step):

    text.py       text corpora, tokenizers and THE ``Vocab`` (also CTC's), truncated-BPTT batches
    embedded.py   the default corpus that ships with Python (pydoc topics; no download)
    markov.py     Markov-chain corpora with a known entropy rate
    synthetic.py  adding, copying memory and temporal order, with their baselines
    digits.py     scikit-learn's 8x8 digits read pixel by pixel or row by row
    audio.py      speech: WAV folders and Hugging Face audio, speaker splits, log-mel
                  cache, connected-digit utterances
"""
