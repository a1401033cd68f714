"""Generation throughput: slm_ray's HFGenerator against plain transformers ``generate``.

Run from the repository root:

    .venv/bin/python bench/bench_generation.py                 # 200 NQ questions, all three modes
    .venv/bin/python bench/bench_generation.py --quick          # 48 questions, a fast check
    .venv/bin/python bench/bench_generation.py --modes no_context --limit 100 --repeats 3

Both sides use the same model object, tokenizer and rendered prompts (``build_prompt``), the same
32-token limit and the same post-processing (``cut_at_stop``). The baseline is what one would
write without slm_ray: ``model.generate(**batch, max_new_tokens=32, do_sample=False)`` on batches of
16 in dataset order, left padding. Runs alternate (baseline, ours, ours, baseline, ...) so that a
noisy machine slows both alike; the ratio is the number to read. Results go to the terminal and to
``bench/results/generation.json`` (after each mode; modes not run this time are kept from the file).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

MODES = ("no_context", "oracle_context", "retriever_context")
BASELINE_BATCH = 16
RESULTS = Path(__file__).resolve().parent / "results" / "generation.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=200, help="NQ questions per mode (default 200)")
    parser.add_argument("--quick", action="store_true", help="48 questions: a fast check")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each side per mode (alternating)")
    parser.add_argument("--model", default="smollm2_135m_gguf", help="conf/model option")
    parser.add_argument("--batch-size", type=int, default=None, help="override model.batch_size for slm_ray")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for both sides (default: torch's own, one per core)")
    parser.add_argument("--cache-dir", default=".cache", help="model and index cache (default .cache)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit = 48
    return args


def build_prompts(cfg: Any, examples: list[Any], mode: str, generator: Any, cache_dir: str) -> list[str]:
    """The rendered prompts of ``mode``, exactly as an experiment builds them."""
    from slm_ray.generation.prompts import build_prompt

    if mode == "no_context":
        contexts: list[Any] = [None] * len(examples)
    elif mode == "oracle_context":
        contexts = [list(e.gold_passages) for e in examples]
    else:
        from slm_ray.data.corpus import builtin_nq_corpus
        from slm_ray.retrieval.base import build_or_load

        retriever = build_or_load(cfg.retriever, builtin_nq_corpus(), cache_dir)[0]
        hits = retriever.retrieve([e.question for e in examples], cfg.retriever.k)
        contexts = [[h.passage for h in row] for row in hits]
    return [build_prompt(e.question, ctx, cfg.prompt, generator, cfg.model.max_prompt_tokens)[0]
            for e, ctx in zip(examples, contexts)]


def run_baseline(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                 stop: tuple[str, ...]) -> tuple[list[str], int]:
    """Plain ``generate`` in dataset order: (answers, answer tokens generated before EOS)."""
    import torch

    from slm_ray.generation.base import cut_at_stop

    answers, tokens = [], 0
    with torch.inference_mode():
        for start in range(0, len(prompts), BASELINE_BATCH):
            batch = tokenizer(prompts[start:start + BASELINE_BATCH], return_tensors="pt", padding=True,
                              add_special_tokens=False)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            for row in out[:, batch["input_ids"].shape[1]:].tolist():
                if tokenizer.eos_token_id in row:
                    row = row[:row.index(tokenizer.eos_token_id)]
                tokens += len(row)
                answers.append(cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), stop))
    return answers, tokens


def run_ours(generator: Any, prompts: list[str]) -> tuple[list[str], int]:
    """HFGenerator.generate_batches, answers put back in dataset order: (answers, tokens generated)."""
    answers: list[str] = [""] * len(prompts)
    tokens = 0
    for indices, generations in generator.generate_batches(prompts):
        for i, g in zip(indices, generations):
            answers[i] = g.text
            tokens += g.generated_tokens
    return answers, tokens


def timed(fn: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result): CPU time is steadier on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def bench_mode(mode: str, prompts: list[str], generator: Any, repeats: int) -> dict[str, Any]:
    """Alternate baseline and slm_ray runs; the median rate of each side."""
    cfg = generator.config
    sides = {
        "baseline": lambda: run_baseline(generator.model, generator.tokenizer, prompts, cfg.max_new_tokens, cfg.stop),
        "slm_ray": lambda: run_ours(generator, prompts),
    }
    seconds: dict[str, list[float]] = {"baseline": [], "slm_ray": []}
    cpu_seconds: dict[str, list[float]] = {"baseline": [], "slm_ray": []}
    outputs: dict[str, tuple[list[str], int]] = {}
    order = [("baseline", "slm_ray"), ("slm_ray", "baseline")]
    for r in range(repeats):
        for side in order[r % 2]:
            elapsed, cpu, outputs[side] = timed(sides[side])
            seconds[side].append(elapsed)
            cpu_seconds[side].append(cpu)
            print(f"  {mode} {side}: {len(prompts) / elapsed:.2f} ex/s ({elapsed:.1f}s, CPU {cpu:.1f}s)", file=sys.stderr)
    n = len(prompts)
    result: dict[str, Any] = {"n_examples": n}
    for side in ("baseline", "slm_ray"):
        s = statistics.median(seconds[side])
        result[side] = {"seconds": [round(x, 3) for x in seconds[side]],
                        "cpu_seconds": [round(x, 3) for x in cpu_seconds[side]],
                        "examples_per_second": round(n / s, 3),
                        "tokens_per_second": round(outputs[side][1] / s, 2), "answer_tokens": outputs[side][1]}
    result["ratio"] = round(result["slm_ray"]["examples_per_second"] / result["baseline"]["examples_per_second"], 3)
    result["cpu_ratio"] = round(statistics.median(cpu_seconds["baseline"]) / statistics.median(cpu_seconds["slm_ray"]), 3)
    base_answers, our_answers = outputs["baseline"][0], outputs["slm_ray"][0]
    same = [a == b for a, b in zip(base_answers, our_answers)]
    result["agreement"] = round(sum(same) / n, 4)
    result["disagreements"] = [{"index": i, "baseline": a, "slm_ray": b}
                               for i, (a, b, ok) in enumerate(zip(base_answers, our_answers, same)) if not ok]
    return result


def previous_modes(path: Path, model: str) -> dict[str, Any]:
    """Modes measured by an earlier run for the same model: kept, so that --modes updates one mode."""
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return previous.get("modes", {}) if previous.get("model") == model else {}


def print_table(results: dict[str, dict[str, Any]]) -> None:
    header = f"{'mode':<18} {'n':>4} {'baseline ex/s':>13} {'slm_ray ex/s':>12} {'ratio':>6} {'CPU ratio':>9} " \
             f"{'agree':>7} {'base tok/s':>10} {'ours tok/s':>10}"
    print(header)
    print("-" * len(header))
    for mode, r in results.items():
        print(f"{mode:<18} {r['n_examples']:>4} {r['baseline']['examples_per_second']:>13.2f} "
              f"{r['slm_ray']['examples_per_second']:>12.2f} {r['ratio']:>5.2f}x {r['cpu_ratio']:>8.2f}x "
              f"{r['agreement']:>7.1%} "
              f"{r['baseline']['tokens_per_second']:>10.1f} {r['slm_ray']['tokens_per_second']:>10.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from slm_ray.composition import compose_config
    from slm_ray.data.nq import NQOpenDataset
    from slm_ray.generation.hf import HFGenerator

    overrides = [f"model={args.model}", "tracker=none", f"experiment.cache_dir={args.cache_dir}"]
    if args.batch_size:
        overrides.append(f"model.batch_size={args.batch_size}")
    cfg = compose_config(overrides)
    examples = NQOpenDataset(name="nq", path="builtin", limit=args.limit, cache_dir=args.cache_dir).load()
    generator = HFGenerator(cfg.model, cache_dir=args.cache_dir)
    # Warm both paths up (first calls allocate and pick kernels) on a few prompts, untimed.
    warm = build_prompts(cfg, examples[:4], "no_context", generator, args.cache_dir)
    run_baseline(generator.model, generator.tokenizer, warm, 4, cfg.model.stop)
    run_ours(generator, warm)

    report = {
        "model": cfg.model.name, "baseline_batch_size": BASELINE_BATCH, "max_new_tokens": cfg.model.max_new_tokens,
        "model_info": generator.describe(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "modes": previous_modes(args.output, cfg.model.name),
    }
    results = {}
    for mode in args.modes:
        prompts = build_prompts(cfg, examples, mode, generator, args.cache_dir)
        mean_tokens = sum(map(generator.count_tokens, prompts)) / len(prompts)
        print(f"{mode}: {len(prompts)} prompts, mean {mean_tokens:.0f} tokens", file=sys.stderr)
        results[mode] = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch_threads": torch.get_num_threads(),
                         "slm_ray_batch_size": cfg.model.batch_size, "repeats": args.repeats,
                         "mean_prompt_tokens": round(mean_tokens, 1),
                         **bench_mode(mode, prompts, generator, args.repeats)}
        report["modes"][mode] = results[mode]
        # Written after every mode, so that an interrupted run keeps what it measured.
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_table(results)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
