"""Where a search runs, apart from what it proposes (optuna keeps storages apart from samplers).

    study      an Optuna study as the score cache: one trial per plan, resume by replay
    queue      batches of plans as WAITING trials for worker processes: claims, heartbeats, retry
    job        what a worker needs (model source, token windows), stored in the study
    owner      one search per study: a claim with a heartbeat, taken over from a dead owner
    worker     ``run_worker``: load the study's model and score waiting plans
    launch     local workers for ``qra search --workers``: placement, memory check, start, stop

``qradaptor.search`` proposes and chooses plans; these modules score them somewhere and keep
the scores.
"""
