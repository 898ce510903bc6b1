"""Studies: one entry per study, a file or a folder when the study has recipe code of its own
(speech/). Each is a config file for ``python -m rnnlab.main --config=experiments/STUDY.py[:VARIANT]``
(``get_config(arg)``, a ``smoke`` variant, ``sweep(add)`` for ``python -m launch``); its docstring says
what the study asks, how to run it and its variants. Results live in docs/<study>/, beside the
artifacts they come from."""
