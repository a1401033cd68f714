"""Trial actors are reused in the plan's order: no actor goes back to a model it has put down.

Tune reuses a finished trial's actor for whichever trial it starts next with the same resources;
the sweep makes that the next trial of the plan (grouped by model), so a reused actor changes model
only where the plan does. Many quick trials of two tiny models on a 2-CPU local Ray, with
``max_concurrent_trials: auto``: Tune's default queue of waiting trials started them out of order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm_ray.sweeps.engine import run_sweep
from slm_ray.sweeps.spec import load_sweep

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_reused_actors_never_go_back_to_a_model(sweep_env: Path, sweep_cache_dir: Path) -> None:
    sweep = sweep_env / "order.yaml"
    sweep.write_text(f"""
name: order
overrides: [dataset.limit=2, tracker=none, "experiment.cache_dir={sweep_cache_dir}"]
grid:
  model: [tiny_llama, tiny_qwen3]
  model.max_new_tokens: [2, 3, 4, 5, 6, 7]
resources: {{cpus: 1, gpus: 0}}
max_concurrent_trials: auto
""")
    plan = load_sweep(sweep)
    assert [t.config.model.name for t in plan.trials] == ["tiny_llama"] * 6 + ["tiny_qwen3"] * 6
    record = run_sweep(plan, dashboard=False)
    assert record["trials_outcome"]["ok"] == 12, record["trials_outcome"]

    runs: dict[str, list[tuple[float, str]]] = {}
    for trial in plan.trials:
        done = json.loads((plan.sweep_dir / "trials" / trial.name / "trial.json").read_text())
        runs.setdefault(done["actor"], []).append((done["worker_span"][0], trial.config.model.name))
    for actor, started in runs.items():
        models = [model for _, model in sorted(started)]
        changes = sum(a != b for a, b in zip(models, models[1:]))
        assert changes == len(set(models)) - 1, (actor, models)  # each model once, in one stretch
    stats = json.loads((plan.sweep_dir / "sweep_stats.json").read_text())["last_run"]
    assert all(n == 1 for loads in stats["model_loads_per_actor"].values() for n in loads.values()), stats
