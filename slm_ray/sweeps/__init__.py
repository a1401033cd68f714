"""The Ray sweep engine: sweep files, a prepare stage, Ray Tune trials that hold the generators.

    spec       sweep files -> a validated plan of trials (no Ray)
    engine     the driver: connects to Ray, prepares, starts the retriever actors, runs Tune
    prepare    index builds and model copies as Ray tasks, before the first trial
    trainable  the Tune trial: one experiment, its generator kept loaded for the next trial
    events     the Tune callback: trial records on the driver's disk, console lines
    display    the driver's console, live status line and sweep.log
    reaper     the local Ray dies with its driver

Only ``spec`` and ``display`` are imported without Ray; ``import slm_ray.sweeps`` imports nothing.
"""
