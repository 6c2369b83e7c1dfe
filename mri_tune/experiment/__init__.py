"""The search: what is searched, what a trial costs, the Ray trainable, the Tuner, the console.

    space.py      the space of each scale and the paper's baseline as one of its points
    resources.py  a trial's CPU/GPU request and how many trials run at once
    settings.py   ExperimentSettings (run_search.py's options, typed and checked)
    record.py     the search record beside Tune's state (read by the results layer)
    trainable.py  the Ray Tune function trainable (one trial = one training run; resumes from
                  the newest complete checkpoint of its folder)
    resume.py     what --resume continues besides unfinished trials: those a dead worker or a
                  full disk stopped
    console.py    one line per trial start and end, the best so far, the trials left
    tuner.py      Ray session, fresh and restored Tuners
"""
