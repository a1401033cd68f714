"""The storage layer: every file slm-ray writes and reads back, and the rules that keep it sound.

run_folder (one experiment's folder: inputs, predictions, results; resume), sweep_folder (a sweep's
folder), cache_entry + cache_manifest (verified cache entries: indexes, model copies), fingerprints
(the hashes resume keys are made of), results (results.json), names (safe folder names), io (atomic
writes, locks). It imports nothing of data, generation or retrieval: what it stores is given to it
(tests/test_layers.py holds the rule).
"""
