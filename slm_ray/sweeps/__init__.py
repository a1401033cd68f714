"""The Ray sweep engine: sweep files, generator and retriever actors, Tune driving, summaries.

    spec     sweep files -> a validated plan of trials (no Ray)
    actors   generator worker actors and the pool that assigns trials to them
    engine   connects to Ray, runs the plan through Ray Tune, collects what happened
    summary  summary.csv/json/md and plots from the trial folders

Only ``spec`` and ``summary`` are imported without Ray; ``import slm_ray.sweeps`` imports nothing.
"""
