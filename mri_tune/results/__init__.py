"""What a search found: ranked trials, the top-k ensemble, evaluation, report, predictions.

    trials.py    the trials of a Tune experiment folder, ranked by validation loss
    ensemble.py  the top-k trials as one ensemble folder; a single checkpoint as a model
    evaluate.py  slice and volume confusion matrices, per-class errors
    report.py    report.md with the search-progress and confusion figures
    predict.py   regions of new volumes, slice profiles (Fig. 6)
"""
