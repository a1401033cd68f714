"""Run one experiment, or a few in a row with Hydra's multirun syntax (``key=a,b``).

    slm-ray run                                   # SmolLM2-135M (packaged), NQ, closed book
    slm-ray run experiment_mode=oracle_context dataset.limit=200
    slm-ray run -m experiment_mode=no_context,oracle_context,retriever_context dataset.limit=200
    slm-ray run model=qwen3_0.6b dataset=simpleqa experiment_mode=retriever_context retriever=dense
    slm-ray run --cfg job model=tiny_llama        # print the composed config and exit
    slm-ray run --config-dir my_conf model=my_model   # your own options next to conf/

Arguments are Hydra overrides (``group=option``, ``key=value``; ``key=a,b`` runs each value in turn,
with or without ``-m``/``--multirun``, loading the model once).
Options: --cfg job|hydra|all (print that config as YAML and exit; a bare --cfg is --cfg job),
--config-dir DIR (a folder of your own options, e.g. DIR/model/my_model.yaml, added to conf/;
SLM_RAY_CONFIG_DIR adds folders too), -m/--multirun, --debug (full tracebacks), --help.
Results go to ``outputs/<experiment.name>/``: results.json, predictions.jsonl, memory_usage.json,
config.json, run.log. For grids on Ray use ``slm-ray sweep``. (``python -m slm_ray.run`` is the same.)
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Sequence

from slm_ray.cli import run_cli
from slm_ray.preflight import check_run

log = logging.getLogger("slm_ray")


class KeepLoaded:
    """Hands out a generator for a config, loading a model only when its load settings differ from
    the last one's (a new temperature or token limit reuses the loaded model)."""

    def __init__(self) -> None:
        self.generator: Any = None

    def __call__(self, cfg: Any) -> Any:
        from slm_ray.experiment import build_generator

        if self.generator is not None and not self.generator.serves(cfg.model):
            self.generator.close()
            self.generator = None
        if self.generator is None:
            self.generator = build_generator(cfg)
        return self.generator


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, __doc__ or "", argv, hydra_flags=True)


def _run(overrides: list[str], print_config: str | None) -> int:
    from slm_ray.composition import compose_jobs
    from slm_ray.data.storage import load_env_file

    load_env_file()
    configs = compose_jobs(overrides, print_config)  # all checked before any runs
    if configs is None:
        return 0
    if len({c.run_name for c in configs}) < len(configs):
        from slm_ray.errors import ConfigError

        if configs[0].experiment.name:
            raise ConfigError("the combinations share one experiment.name; drop experiment.name to get one per run")
        raise ConfigError("the combinations share one default name (it names model, dataset, mode, retriever and k "
                          "only): run them one at a time, each with its own experiment.name")
    check_run(configs)  # models, devices: refused before anything loads or is written
    from slm_ray.experiment import output_dir, run_experiment

    keep_loaded = KeepLoaded()
    try:
        for cfg in configs:
            run_experiment(cfg, generator=keep_loaded)  # logs the metrics line, into run.log too
            print(f"results: {output_dir(cfg) / 'results.json'}")
    finally:
        # An engine with processes of its own (vLLM) stops cleanly here, not in an exit hook
        # that kills what has not stopped after a few seconds.
        if keep_loaded.generator is not None:
            keep_loaded.generator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
