"""Tasks for the one training loop (rnnlab.train.loop): each module has
``make_task(config, workdir) -> loop.Task``, the pure jitted steps and the
evaluation of one kind of study.

    lm.py        language modelling with truncated BPTT (characters or words)
    sequence.py  generated sequence tasks (adding, copying, temporal order) and
                 sequence classification (digits)
"""
