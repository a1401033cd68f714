"""Run one experiment.

    python -m slm_ray.run                                   # SmolLM2-135M (packaged), NQ, closed book
    python -m slm_ray.run experiment_mode=oracle_context dataset.limit=200
    python -m slm_ray.run model=qwen3_0.6b dataset=simpleqa experiment_mode=retriever_context retriever=dense
    python -m slm_ray.run --cfg model=tiny_llama            # print the composed config and exit

Arguments are Hydra overrides (``group=option``, ``key=value``). Results go to
``outputs/<experiment.name>/``: results.json, predictions.jsonl, memory_usage.json, config.json, run.log.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Sequence

from slm_ray.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, __doc__ or "", argv)


def _run(overrides: list[str], print_config: bool) -> int:
    from slm_ray.composition import compose_config
    from slm_ray.data.storage import load_env_file

    load_env_file()
    cfg = compose_config(overrides)
    if print_config:
        print(json.dumps(cfg.model_dump(by_alias=True), indent=2))
        return 0
    from slm_ray.experiment import output_dir, run_experiment

    results = run_experiment(cfg)
    log = logging.getLogger("slm_ray")
    metrics = results["metrics"]
    summary = ", ".join(f"{k} {v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" for k, v in metrics.items())
    log.info("%s: %d examples, %s", cfg.run_name, results["n_examples"], summary)
    print(f"results: {output_dir(cfg) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
