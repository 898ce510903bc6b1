"""Models built on recurrent stacks (rnnlab.layers.Stack), as pure functions:

    lm.py      the language model: embedding -> stack -> logits (AWD-LSTM dropouts, tying)
    seq.py     the sequence model for synthetic tasks: stack -> linear readout (every
               step or the last), with its masked losses
    speech.py  the CTC acoustic model: features -> optional 1-D convolutions ->
               bidirectional stack -> logits over blank + vocabulary
"""
