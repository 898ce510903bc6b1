"""Tasks for the one training loop (rnnlab.train.loop): the pure jitted steps and
the evaluation of one kind of study. lm.py and sequence.py also build the task
(``make_task(config, workdir) -> loop.Task``) and name the trainer a config picks
(``train_and_evaluate``); speech.py holds the parts any speech study can use, and
the speech study builds its Task in experiments/speech/task.py.

    lm.py        language modelling with truncated BPTT (characters or words)
    sequence.py  generated sequence tasks (adding, copying, temporal order) and
                 sequence classification (digits)
    speech.py    CTC speech recognition: data, model, train step with EMA,
                 greedy/beam evaluation (no loop)
"""
