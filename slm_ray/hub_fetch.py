"""Download a model or encoder repo from the Hugging Face hub into its cache, only the files a load reads.

Which files: ``from_pretrained`` reads the repo's root only: ``config.json`` and
``generation_config.json``, the tokenizer (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``, ``vocab.json`` + ``merges.txt``, a sentencepiece ``tokenizer.model``,
``*.tiktoken``), the chat template (``chat_template.jinja`` / ``.json``) and the weights, as
safetensors (with their ``*.index.json``). ``pytorch_model*.bin`` is taken only where a folder has
no safetensors, since transformers prefers safetensors when both exist. Everything else is left:
``onnx/``, ``openvino/``, ``original/`` checkpoints, GGUF, TF/Flax/Rust weights, images, which
together are often several times the model. A sentence-transformers repo adds its README (the
model card it reads) and its module folders (``1_Pooling/``, ``2_Dense/``...), which
sentence-transformers loads whole.

A repo counts as cached when the snapshot ``main`` points to holds every chosen file (checked
against the tree listing huggingface_hub keeps in its cache; without one, a config and a weights
file at the root), so a second fetch makes no request at all.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Iterable

#: Root files a load reads (weights are chosen separately: safetensors, else .bin).
ROOT_PATTERNS = ("*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
#: A sentence-transformers module folder: ``<index>_<Module>``, listed in its modules.json.
MODULE_FOLDER = re.compile(r"^\d+_[^/]+$")
#: Weights of other frameworks or formats: never read by a torch load.
OTHER_WEIGHTS = ("*.h5", "*.msgpack", "*.ot", "*.onnx", "*.gguf", "*.pth", "*.pt", "*.ckpt", "*.tflite", "*.mlmodel")


class HubFetchError(Exception):
    """One repo could not be fetched; the message says why in one line."""


@dataclass(frozen=True)
class Fetched:
    """What a download did: ``files`` new files of ``size`` bytes (0 and 0: it was all cached)."""

    files: int
    size: int


def choose_files(paths: Iterable[str], encoder: bool = False) -> list[str]:
    """The files of a repo a load needs (see the module docstring for why these)."""
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        folder, _, name = path.rpartition("/")
        if folder and not (encoder and "/" not in folder and MODULE_FOLDER.match(folder)):
            continue  # from_pretrained reads the root only; sentence-transformers also its module folders
        by_folder.setdefault(folder, []).append(name)
    chosen: list[str] = []
    for folder, names in by_folder.items():
        has_safetensors = any(n.endswith(".safetensors") for n in names)
        for name in names:
            if name.endswith(".safetensors"):
                keep = True
            elif name.endswith(".bin"):
                keep = not has_safetensors and (name.startswith("pytorch_model") or bool(folder))
            elif folder:  # a module folder is loaded whole, less other frameworks' weights
                keep = not any(fnmatchcase(name, p) for p in OTHER_WEIGHTS)
            else:
                keep = any(fnmatchcase(name, p) for p in ROOT_PATTERNS) or (encoder and name == "README.md")
            if keep:
                chosen.append(f"{folder}/{name}" if folder else name)
    return sorted(chosen)


def encoder_repo(name: str) -> str:
    """The hub repo of a sentence-transformers name: a name without '/' is
    ``sentence-transformers/<name>`` (as SentenceTransformer resolves it), except the old bare
    transformers names it keeps as they are."""
    if "/" in name:
        return name
    from sentence_transformers.util.misc import ORIGINAL_TRANSFORMER_MODELS

    return name if name.lower() in ORIGINAL_TRANSFORMER_MODELS else f"sentence-transformers/{name}"


def encoder_cache_dir(hub_cache: Path) -> Path:
    """Where SentenceTransformer looks: SENTENCE_TRANSFORMERS_HOME when set, else the hub cache."""
    home = os.environ.get("SENTENCE_TRANSFORMERS_HOME")
    return Path(home).expanduser() if home else hub_cache


def _snapshot(repo: str, cache: Path) -> Path | None:
    """The cached snapshot folder ``main`` points to, or None."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    ref = storage / "refs" / "main"
    if not ref.is_file():
        return None
    folder = storage / "snapshots" / ref.read_text().strip()
    return folder if folder.is_dir() else None


def is_cached(repo: str, cache: Path, encoder: bool = False) -> bool:
    """Every file a load needs is in the cached snapshot of ``main``; no network."""
    snapshot = _snapshot(repo, cache)
    if snapshot is None:
        return False
    try:
        from huggingface_hub import get_cached_repo_tree  # huggingface_hub 2.x keeps the repo's file list

        listed = [f.path for f in get_cached_repo_tree(repo, cache_dir=str(cache))]
    except Exception:  # no list: the cache was filled by from_pretrained, or by an older huggingface_hub
        has_weights = any(p.suffix in WEIGHT_SUFFIXES for p in snapshot.iterdir())
        return (snapshot / "config.json").is_file() and has_weights
    wanted = choose_files(listed, encoder)
    return bool(wanted) and all((snapshot / f).is_file() for f in wanted)


def download(repo: str, cache: Path, endpoint: str, encoder: bool = False) -> Fetched:
    """Download what a load needs of ``repo`` into ``cache``; raise HubFetchError in one line."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.hf_api import RepoFile

    try:
        api = HfApi(endpoint=endpoint)
        commit = api.repo_info(repo, revision="main").sha
        files = {f.path: f.size for f in api.list_repo_tree(repo, recursive=True, revision=commit)
                 if isinstance(f, RepoFile)}
        wanted = choose_files(files, encoder)
        needed = "modules.json" if encoder else "config.json"
        if needed not in wanted and "config.json" not in wanted:
            raise HubFetchError(f"{repo} on {endpoint} has no {needed} at its root: not a "
                                f"{'sentence-transformers' if encoder else 'transformers'} model repo")
        snapshot = cache / ("models--" + repo.replace("/", "--")) / "snapshots" / str(commit)
        missing = [f for f in wanted if not (snapshot / f).is_file()]
        size = sum(files[f] or 0 for f in missing)
        if missing and not sys.stderr.isatty():  # no progress bars in a log: one line instead
            print(f"  {repo}: downloading {len(missing)} files, {size / 1e6:.1f} MB from {endpoint} ...",
                  file=sys.stderr, flush=True)
        snapshot_download(repo, cache_dir=str(cache), endpoint=endpoint,
                          allow_patterns=[glob.escape(f) for f in wanted])
    except HubFetchError:
        raise
    except Exception as exc:  # every failure of one repo becomes its error line; the others go on
        raise HubFetchError(redact(explain(exc, repo, endpoint, cache, encoder))) from exc
    return Fetched(len(missing), size)


def explain(exc: Exception, repo: str, endpoint: str, cache: Path, encoder: bool = False) -> str:
    """One line for a failed download, saying what to check. Errors are told apart by class name, so
    that this works with every huggingface_hub the supported transformers versions bring (their HTTP
    clients differ: requests, httpx, httpx2)."""
    if _is(exc, "GatedRepoError"):
        return f"{repo} is gated on {endpoint}: accept its terms on the hub, then set HF_TOKEN"
    if _is(exc, "RepositoryNotFoundError"):
        folder = "give an existing folder" if encoder else "a local folder needs model.source=local"
        return f"{repo} not found on {endpoint} (check the repo id; a private repo needs HF_TOKEN; {folder})"
    if _is(exc, "RevisionNotFoundError"):
        return f"{repo} has no branch 'main' on {endpoint}"
    if _is(exc, "ConnectError", "TimeoutException", "ConnectionError", "Timeout", "LocalEntryNotFoundError"):
        return f"the hub at {endpoint} cannot be reached ({type(exc).__name__}): check the network and HF_ENDPOINT"
    if _is(exc, "HfHubHTTPError"):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", "?")
        return f"{endpoint} answered HTTP {status} for {repo}: {_first_line(exc)}"
    if _is(exc, "HFValidationError"):
        return f"{repo!r} is not a hub repo id (expected org/name, e.g. HuggingFaceTB/SmolLM2-360M-Instruct)"
    if isinstance(exc, OSError):
        return f"cannot write {repo} into {cache}: {exc.strerror or exc}"
    return f"{repo}: {type(exc).__name__}: {_first_line(exc)}"


def _is(exc: Exception, *names: str) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def _first_line(exc: Exception) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def redact(message: str) -> str:
    """No token or secret key from the environment in anything printed."""
    from slm_ray.redaction import redact

    return redact(message)
