"""The speech recognition study's own code (its entry and config:
``experiments/speech_recognition.py``).

    recipe.py      decoding as the study does it: ROVER over test-time noise floors,
                   prior matching on a speaker's unlabelled speech, digit confusions,
                   member threads (an ensemble's members trained on threads of their own)
    task.py        the study's task on the one training loop (rnnlab.train.loop)
    transcribe.py  the CLI that transcribes WAV files or re-scores a trained run
"""
