"""dtype ``auto``: bf16 only where the hardware computes it natively, recorded and part of the keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm_ray import dtypes
from slm_ray.dtypes import choose_dtype, cpu_flags_of_this_machine


@pytest.mark.parametrize(("device", "flags", "capability", "expected"), [
    ("cpu", {"avx2", "avx512f", "avx512_bf16"}, None, "bfloat16"),   # Cooper Lake, Zen 4
    ("cpu", {"avx2", "amx_tile", "amx_bf16"}, None, "bfloat16"),      # Sapphire Rapids
    ("cpu", {"avx2", "avx512f", "avx512_vnni"}, None, "float32"),     # Skylake/Cascade Lake: bf16 emulated
    ("cpu", set(), None, "float32"),                                  # no cpuinfo (macOS)
    ("cuda", set(), (8, 0), "bfloat16"),                              # A100
    ("cuda", set(), (9, 0), "bfloat16"),                              # H100
    ("cuda", set(), (7, 5), "float32"),                               # T4: no native bf16
])
def test_auto_picks_bf16_only_on_native_hardware(device, flags, capability, expected) -> None:
    dtype, reason = choose_dtype("auto", device, cpu_flags=flags, cuda_capability=capability)
    assert dtype == expected
    assert reason.startswith("auto: ") and (str(capability[0]) in reason if capability else "CPU" in reason)


def test_an_explicit_dtype_passes_through() -> None:
    assert choose_dtype("float32", "cpu", cpu_flags={"avx512_bf16"}) == ("float32", "requested")
    assert choose_dtype("float16", "cuda", cuda_capability=(7, 0)) == ("float16", "requested")
    with pytest.raises(ValueError, match="float8"):
        choose_dtype("float8", "cpu", cpu_flags=set())


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: x\nflags\t\t: fpu sse2 avx512_bf16 amx_bf16\n\nprocessor\t: 1\n")
    assert {"avx512_bf16", "amx_bf16", "sse2"} <= cpu_flags_of_this_machine(info)
    assert cpu_flags_of_this_machine(tmp_path / "missing") == set()


def test_older_results_without_dtype_fields_still_read() -> None:
    from slm_ray.store.results import Results

    old = {"experiment": "e", "experiment_mode": "no_context", "model": "m", "dataset": "nq", "n_examples": 1,
           "metrics": {"token_recall": {"mean": 0.5, "ci_low": 0.0, "ci_high": 1.0, "n": 1}},
           "throughput": {}, "model_info": {"name": "m", "dtype": "float32"}}
    typed = Results.model_validate(old)
    assert typed.model_info.dtype == "float32" and typed.model_info.dtype_reason is None
    assert Results.model_validate({**old, "model_info": {}}).model_info.dtype is None


def test_dense_index_key_holds_the_encoder_dtype() -> None:
    """Embeddings differ between dtypes, so do their indexes; a float32 index keeps its old key
    (the one it had before the dtype and the ivfpq-only settings existed)."""
    import hashlib

    from slm_ray.config import DenseConfig
    from slm_ray.data.base import Passage
    from slm_ray.data.corpus import corpus_fingerprint
    from slm_ray.retrieval.base import QUERY_TIME_KEYS, index_key
    from slm_ray.retrieval.faiss_index import IVFPQ_KEYS

    corpus = [Passage(id="p0", title="t", text="some text")]
    fp32, bf16 = DenseConfig(dtype="float32", device="cpu"), DenseConfig(dtype="bfloat16", device="cpu")
    assert index_key(fp32, corpus) != index_key(bf16, corpus)
    before = {k: v for k, v in fp32.model_dump().items()
              if k not in QUERY_TIME_KEYS and k != "dtype" and k not in IVFPQ_KEYS}
    blob = json.dumps({"settings": before, "corpus": corpus_fingerprint(corpus)}, sort_keys=True)
    assert index_key(fp32, corpus) == f"dense-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def test_resume_key_holds_the_resolved_dtype() -> None:
    from slm_ray.store.fingerprints import answer_settings, reconcile_resolved, without_resolved

    config = {"model": {"dtype": "auto", "batch_size": 4}, "retriever": {"dtype": "float32"},
              "experiment_mode": "retriever_context"}
    decided = answer_settings(config, {"model": "bfloat16", "retriever": "bfloat16"})
    assert decided["model"]["resolved_dtype"] == "bfloat16"
    assert "resolved_dtype" not in decided["retriever"]  # an explicit dtype is its own record
    open_ = answer_settings(config)  # a sweep driver: decided where the trial runs
    assert open_["model"]["resolved_dtype"] == "auto"
    assert reconcile_resolved(open_, decided)[0] == decided
    other = answer_settings(config, {"model": "float32"})
    assert reconcile_resolved(other, decided)[0] != reconcile_resolved(other, decided)[1]
    assert without_resolved(decided) == without_resolved(other) == without_resolved(open_)


def _fake_cpu(monkeypatch: pytest.MonkeyPatch, *flags: str) -> None:
    """This machine's CPU flags as the test says (the run reads them deep inside model loading)."""
    monkeypatch.setattr(dtypes, "cpu_flags_of_this_machine", lambda cpuinfo="/proc/cpuinfo": set(flags))


def test_a_run_records_its_dtype_and_a_bf16_folder_refuses_a_float32_resume(make_config, monkeypatch) -> None:
    from slm_ray.experiment import build_dataset, output_dir, run_experiment
    from slm_ray.inputs import run_inputs
    from slm_ray.store.run_folder import InputsChanged, RunFolder

    cfg = make_config("model=tiny_llama", "model.dtype=auto", "model.device=cpu", "dataset.limit=4",
                      "experiment.name=auto_dtype")
    _fake_cpu(monkeypatch, "avx512_bf16")
    results = run_experiment(cfg, show_progress=False)
    assert results["model_info"]["dtype"] == "bfloat16"
    assert results["model_info"]["dtype_reason"] == "auto: CPU has avx512_bf16"
    stored = json.loads((output_dir(cfg) / "inputs.json").read_text())
    assert stored["settings"]["model"]["resolved_dtype"] == "bfloat16"
    # a sweep driver leaves the dtype open: it finds the folder complete, whatever its own CPU has
    _fake_cpu(monkeypatch)
    assert RunFolder(output_dir(cfg)).state(run_inputs(cfg, build_dataset(cfg))) == "complete"
    # the same config on a CPU without native bf16 would answer in float32: not into this folder
    (output_dir(cfg) / "results.json").unlink()
    with pytest.raises(InputsChanged, match="model.resolved_dtype: 'bfloat16' -> 'float32'"):
        run_experiment(cfg, show_progress=False)
