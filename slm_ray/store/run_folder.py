"""The run folder, ``<output_dir>/<name>/``: its one owner. Everything that creates, locks, resumes,
appends to, finishes or reads an experiment's folder goes through this module.

A folder is written by one process at a time: ``RunFolder.open`` holds an exclusive lock
(``.lock``, flock) for the whole run, and a second process is refused in one line naming the holder.
The kernel drops the lock when its process dies, so a killed run's folder is taken over at once.
A folder that holds anything but a run's files (a sweep, the sweeps root, a user's notes) is refused.

Answers are tied to what they were computed from: ``inputs.json`` records the answer settings
(model and decoding, prompt, mode, dataset selection, retriever), a digest of the examples used
(ids, questions, answers, gold passages) and of the corpus. A resumed or repeated run with other
inputs is refused, naming what changed; with ``experiment.replace=true`` the old folder is moved
aside to ``<name>.replaced-<time>`` (nothing is ever deleted).

Each process that generates answers adds a segment to ``segments.json`` (its time, counts and
memory peaks, saved after every batch), and ``results.json`` aggregates the segments, so a resumed
run reports the time and memory of all its work. A finished run stays finished: running it again
reads its results and writes nothing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from slm_ray.errors import FolderUnusable, SlmRayError, unwritable
from slm_ray.store.io import atomic_write_json, atomic_write_text, read_json
from slm_ray.store.results import Results

log = logging.getLogger("slm_ray.store.run_folder")

PREDICTIONS = "predictions.jsonl"
RESULTS = "results.json"
CONFIG = "config.json"
INPUTS = "inputs.json"
SEGMENTS = "segments.json"
MEMORY = "memory_usage.json"
LOG = "run.log"
LOCK = ".lock"
#: Marks a folder moved aside by ``experiment.replace=true``; such folders are not runs of a sweep.
REPLACED_MARK = ".replaced-"
#: What a run folder may hold besides temporary files of atomic writes (``.<name>.*.tmp``):
#: the run's files, and the sweep's record of the trial.
RUN_FILES = frozenset({PREDICTIONS, RESULTS, CONFIG, INPUTS, SEGMENTS, MEMORY, LOG, LOCK, "trial.json"})
#: Keys every prediction line has.
PREDICTION_KEYS = ("id", "prediction", "metrics")


class FolderInUse(SlmRayError):
    """Another live process holds the folder's lock."""


class InputsChanged(SlmRayError):
    """The folder holds answers computed from other inputs than this run's."""


class BadPredictions(SlmRayError):
    """A line of predictions.jsonl that is neither valid nor a torn last line (file:line)."""


# --- locking ---------------------------------------------------------------------------------------


def _holder_text(lock_path: Path, wait_s: float = 1.0) -> str:
    """Who holds a lock, from ``.lock``. The holder writes it just after locking, so a record that is
    missing, or names a process that is gone, is read again for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            holder = json.loads(lock_path.read_text(encoding="utf-8"))
            text = f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
            if holder["host"] != socket.gethostname() or _alive(int(holder["pid"])):
                return text
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            return "another process"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: The setting that chooses where run and sweep folders go (named in every write fault's line).
OUTPUT_SETTING = "experiment.output_dir"


def _unusable(path: Path, exc: OSError) -> FolderUnusable:
    """The one line for a fault writing the run folder (``slm_ray.errors.unwritable``)."""
    return unwritable(path, exc, OUTPUT_SETTING) or FolderUnusable(
        f"cannot write to {path}: {exc.strerror or type(exc).__name__} (choose another {OUTPUT_SETTING})")


class FolderLock:
    """An exclusive lock on a folder, held from ``acquire`` to ``release`` by this process: ``flock``
    on the folder itself, so no file can be deleted to break it; ``.lock`` names the holder.

    ``acquire`` creates the folder (and missing parents) and remembers which ones it created, so
    that ``release(tidy=True)`` can remove exactly those, and only while they are empty: a refused
    run leaves nothing behind and never touches another run's files.
    """

    def __init__(self, folder: Path, what: str = "run"):
        self.folder = Path(folder)
        self.what = what
        self.created: list[Path] = []
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK

    def acquire(self) -> "FolderLock":
        for _ in range(100):  # retried only when the folder was replaced or removed under us
            self._make_folders()
            try:
                fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:  # tidied away meanwhile: make it again
                continue
            except OSError as exc:
                raise _unusable(self.folder, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderInUse(f"{self.folder} is in use by {_holder_text(self.path)}: wait for that "
                                  f"{self.what} to finish, or use another name") from None
            try:
                same = os.stat(self.folder).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder moved or removed the folder before we locked it
                os.close(fd)
                continue
            self._fd = fd
            self._write_holder()
            return self
        raise FolderInUse(f"{self.folder}: could not take its lock")

    def _make_folders(self) -> None:
        missing = []
        for folder in (self.folder, *self.folder.parents):
            if folder.is_dir():
                break
            missing.append(folder)
        for folder in reversed(missing):
            try:
                folder.mkdir()
                self.created.append(folder)
            except FileExistsError:
                if not folder.is_dir():
                    raise FolderUnusable(f"cannot create {folder}: a file of that name is in the way "
                                         "(choose another experiment.output_dir or name)") from None
            except OSError as exc:
                raise _unusable(folder, exc) from None

    def _write_holder(self) -> None:
        """``.lock`` says who holds the folder (the lock itself is on the folder: deleting this file
        frees nothing)."""
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            self.path.write_text(json.dumps(holder) + "\n", encoding="utf-8")
        except OSError as exc:
            self.release()
            raise _unusable(self.folder, exc) from None

    def release(self, tidy: bool = False) -> None:
        """Unlock; with ``tidy`` (nothing of this process's work is in the folder), remove the holder
        record and the folders this lock created, while they are empty."""
        if self._fd is None:
            return
        if tidy:
            self.path.unlink(missing_ok=True)
            for folder in sorted(self.created, key=lambda p: len(p.parts), reverse=True):
                try:
                    folder.rmdir()
                except OSError:  # not empty (another run's files) or gone: keep it
                    break
        os.close(self._fd)
        self._fd = None


def holder_of(folder: Path) -> str | None:
    """Who holds ``folder``'s lock right now (None when nobody does), without taking it."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_text(folder / LOCK)
    finally:
        os.close(fd)  # closing drops a shared lock taken for the probe
    return None


def running_sweep_of(trial_folder: Path) -> str | None:
    """For a folder ``<sweep>/trials/<name>`` of a sweep that is running now: the sweep and its holder."""
    sweep = trial_folder.parent.parent
    if trial_folder.parent.name != "trials" or not (sweep / "sweep.json").is_file():
        return None
    holder = holder_of(sweep)
    return None if holder is None else f"{sweep} (held by {holder})"


# --- prediction lines ------------------------------------------------------------------------------


def complete_lines(path: Path) -> list[str]:
    """The whole lines of a file (a torn last line, still being written, is left out)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [line for line in text.split("\n")[:-1] if line.strip()]


def parse_prediction(line: str) -> tuple[dict[str, Any] | None, str | None]:
    """(row, None) for a prediction line, (None, why not) for any other line: each line parsed once."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(row, dict):
        return None, f"a JSON {type(row).__name__}, not an object"
    missing = [k for k in PREDICTION_KEYS if k not in row]
    if missing:
        return None, f"no {missing[0]!r} key"
    if not isinstance(row["id"], str) or not isinstance(row["prediction"], str) or not isinstance(row["metrics"], dict):
        return None, "'id' and 'prediction' must be strings and 'metrics' an object"
    return row, None


def parse_predictions(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, problems): every valid line of ``path`` and one ``file:line: ...`` per bad one.

    The last line is forgiven when it does not end in a newline (a crash mid-write tore it);
    a second line for the same example is a problem too.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    except UnicodeDecodeError as exc:
        return [], [f"{path}: not valid UTF-8 (byte {exc.start})"]
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row, problem = parse_prediction(line)
        if row is not None:
            if row["id"] in first_line:
                problem = f"example {row['id']!r} again (first on line {first_line[row['id']]})"
            else:
                first_line[row["id"]] = number
                rows.append(row)
        if problem:
            problems.append(f"{path}:{number}: {problem}")
    if torn.strip() and parse_prediction(torn)[0] is not None:
        log.info("%s: its last line has no newline (a write was cut); it will be rewritten", path)
    return rows, problems


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The prediction rows of ``path``; a torn last line is dropped, any other bad line refused."""
    rows, problems = parse_predictions(path)
    if problems:
        extra = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BadPredictions(f"{problems[0]}{extra}: fix or remove that line (nothing was regenerated)")
    return rows


def prediction_ids(lines: Iterable[str]) -> list[str]:
    """The example ids of prediction lines, in order (lines that are not predictions are left out)."""
    return [row["id"] for row in map(_row_or_none, lines) if row is not None]


def _row_or_none(line: str) -> dict[str, Any] | None:
    return parse_prediction(line)[0]


def unseen_lines(lines: Iterable[str], known: set[str]) -> list[str]:
    """The valid prediction lines whose example is not in ``known``, each once (``known`` gains them)."""
    fresh = []
    for line in lines:
        row = _row_or_none(line)
        if row is not None and row["id"] not in known:
            known.add(row["id"])
            fresh.append(line)
    return fresh


def answers_example(row: dict[str, Any], example: Any) -> bool:
    """Whether a stored prediction row was made for ``example`` as it is now (same question, answers)."""
    return (example is not None and row.get("question") == example.question
            and list(row.get("answers") or []) == list(example.answers))


def append_prediction_lines(path: Path, lines: list[str], known: set[str] | None = None) -> set[str]:
    """Append the valid lines of examples not yet in ``path`` (a mirror of a remote worker's file).
    ``known``: the ids already in the file, when the caller keeps them; returns the updated set."""
    if known is None:
        known = set(prediction_ids(complete_lines(path)))
    fresh = unseen_lines(lines, known)
    if fresh:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as handle:
                handle.write("".join(line + "\n" for line in fresh))
        except OSError as exc:
            raise _unusable(path.parent, exc) from None
    return known


# --- inputs: what answers depend on ----------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """The resume key: answer settings, examples digest, corpus digest; and the aggregation settings
    (seed, bootstrap resamples), which only shape results.json."""

    settings: dict[str, Any]
    n_examples: int
    examples: str
    corpus: str | None
    aggregation: dict[str, Any] = field(default_factory=dict)

    def matches(self, other: "Inputs | None") -> bool:
        """The same inputs, a dtype left open on one side (a sweep's driver) matching any decided one."""
        return (other is not None and not self.changes_from(other)
                and (self.n_examples, self.aggregation) == (other.n_examples, other.aggregation))

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "settings": self.settings, "n_examples": self.n_examples, "examples": self.examples,
                "corpus": self.corpus, "aggregation": self.aggregation}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Inputs":
        return cls(data["settings"], int(data["n_examples"]), str(data["examples"]), data.get("corpus"),
                   dict(data.get("aggregation") or {}))

    def changes_from(self, old: "Inputs") -> list[str]:
        """What differs from ``old``, in words (empty when the same answers hold)."""
        from slm_ray.store.fingerprints import reconcile_resolved

        settings, old_settings = reconcile_resolved(self.settings, old.settings)
        changes = [f"{key}: {before!r} -> {after!r}" for key, before, after in _diff(old_settings, settings)]
        if old.examples != self.examples:
            changes.append(f"the examples (ids, questions, answers or gold passages; {old.n_examples} before, "
                           f"{self.n_examples} now) are not the ones answered: was the data file edited?")
        if old.corpus != self.corpus:
            changes.append("the retrieval corpus content changed")
        return changes


def _diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [(prefix.rstrip("."), old, new)]


# --- the folder --------------------------------------------------------------------------------------


class RunFolder:
    """One experiment's folder: read it freely; write it only through ``open`` (locked)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    # -- reading (no lock) -----------------------------------------------------------------------

    def results(self) -> Results | None:
        """results.json, typed; None when missing or unreadable."""
        data = read_json(self.file(RESULTS))
        if not isinstance(data, dict):
            return None
        try:
            return Results.model_validate(data)
        except ValueError:
            return None

    def raw_results(self) -> dict[str, Any] | None:
        data = read_json(self.file(RESULTS))
        return data if isinstance(data, dict) else None

    def config(self) -> dict[str, Any] | None:
        data = read_json(self.file(CONFIG))
        return data if isinstance(data, dict) else None

    def inputs(self) -> Inputs | None:
        data = read_json(self.file(INPUTS))
        try:
            return Inputs.from_json(data) if isinstance(data, dict) else None
        except (KeyError, TypeError, ValueError):
            return None

    def memory(self) -> dict[str, Any] | None:
        data = read_json(self.file(MEMORY))
        return data if isinstance(data, dict) else None

    def segments(self) -> list[dict[str, Any]]:
        """The recorded segments; a damaged file is reported and counts as none (the answers stay)."""
        data = read_json(self.file(SEGMENTS))
        if data is None and self.file(SEGMENTS).exists() or data is not None and not isinstance(data, list):
            log.warning("%s is unreadable: the time and memory of earlier segments of this run are lost "
                        "(its answers are kept)", self.file(SEGMENTS))
            return []
        return [s for s in data if isinstance(s, dict)] if isinstance(data, list) else []

    def predictions(self) -> list[dict[str, Any]]:
        return read_predictions(self.file(PREDICTIONS))

    def count_predictions(self) -> int:
        """Prediction lines written so far (lenient: for progress and summaries of unfinished runs)."""
        return len(prediction_ids(complete_lines(self.file(PREDICTIONS))))

    def has_answers(self) -> bool:
        return self.file(PREDICTIONS).is_file() and self.file(PREDICTIONS).stat().st_size > 0

    def state(self, inputs: Inputs, replace: bool = False) -> str:
        """``complete``, ``partial`` or ``new`` for a run with ``inputs``; InputsChanged when the folder
        holds answers from other inputs (unless ``replace``: then ``new``, the folder will move aside)."""
        foreign = self.foreign_entry()
        if foreign:
            raise FolderUnusable(f"{self.path} is not a run folder (it holds {foreign!r}, which no run writes)")
        changes = self._changes(inputs)
        if changes:
            if replace:
                return "new"
            raise InputsChanged(self._changed_message(changes))
        if (self.has_answers() and self.results() is not None and inputs.matches(self.inputs())
                and self.count_predictions() >= inputs.n_examples):
            return "complete"
        return "partial" if self.has_answers() else "new"

    def _changes(self, inputs: Inputs) -> list[str]:
        if not self.has_answers():
            return []
        old = self.inputs()
        if old is None:
            why = "an unreadable" if self.file(INPUTS).exists() else "no"
            return [f"its answers have {why} {INPUTS} (damaged, or written by an older version)"]
        return inputs.changes_from(old)

    def _changed_message(self, changes: list[str]) -> str:
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        return (f"{self.path} holds answers for other inputs: {changes[0]}{more}; add experiment.replace=true "
                "to move that folder aside and start over, or use another name")

    # -- writing ------------------------------------------------------------------------------------

    def foreign_entry(self) -> str | None:
        """The first entry of the folder that no run writes (a sweep, a user's file), or None."""
        if not self.path.is_dir():
            return None
        for entry in sorted(self.path.iterdir()):
            temporary = entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file()
            if not temporary and (entry.name not in RUN_FILES or not entry.is_file()):
                return entry.name + ("/" if entry.is_dir() else "")
        return None

    def open(self, inputs: Inputs, config: dict[str, Any], replace: bool = False,
             within_sweep: bool = False) -> "RunSession":
        """Lock the folder (creating it) and check that its answers belong to ``inputs``. A trial
        folder of a sweep that is running belongs to that sweep's workers (``within_sweep``) only."""
        sweep = None if within_sweep else running_sweep_of(self.path)
        if sweep:
            raise FolderInUse(f"{self.path} is a trial of the sweep in {sweep}, which is running: wait for it to "
                              "finish, or use another experiment.name")
        lock = FolderLock(self.path, "run").acquire()
        try:
            foreign = self.foreign_entry()
            if foreign:
                raise FolderUnusable(f"{self.path} is not a run folder (it holds {foreign!r}, which no run "
                                     "writes): choose another experiment.name or experiment.output_dir")
            changes = self._changes(inputs)
            if changes and not replace:
                raise InputsChanged(self._changed_message(changes))
            if changes:
                aside = self._move_aside(lock)
                lock = FolderLock(self.path, "run").acquire()
                log.warning("inputs changed (%s); the old answers were moved to %s", changes[0], aside)
            return RunSession(self, lock, inputs, config)
        except BaseException:
            lock.release(tidy=True)
            raise

    def _move_aside(self, lock: FolderLock) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}{REPLACED_MARK}{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}{REPLACED_MARK}{stamp}-{n}")
        os.rename(self.path, aside)  # our lock moves with it, so no one writes into the old folder
        lock.release()
        return aside


class RunSession:
    """A locked run folder being written: answers so far, appends, segments, the final files."""

    def __init__(self, folder: RunFolder, lock: FolderLock, inputs: Inputs, config: dict[str, Any]):
        self.folder = folder
        self.lock = lock
        self.inputs = inputs
        self.config = config
        self.wrote: list[str] = []
        self.closed = False
        rows = folder.predictions()
        self.done: dict[str, dict[str, Any]] = {r["id"]: r for r in rows}
        self.previous_segments = folder.segments()
        self.segment: dict[str, Any] | None = None
        self.complete = (bool(rows) and folder.results() is not None and folder.inputs() == inputs)

    @property
    def path(self) -> Path:
        return self.folder.path

    def check_examples(self, examples: list[Any]) -> None:
        """Every stored answer is for an example of this run, with the same question and answers; the
        run is complete only when every example has its answer (a line deleted by hand is answered again)."""
        by_id = {e.id: e for e in examples}
        missing = [e.id for e in examples if e.id not in self.done]
        if self.complete and missing:
            log.warning("%s: %d example(s) have no answer although results.json exists (e.g. %r): answering them",
                        self.path, len(missing), missing[0])
            self.complete = False
        for row in self.done.values():
            if not answers_example(row, by_id.get(row["id"])):
                raise InputsChanged(self.folder._changed_message(
                    [f"the stored answer for example {row['id']!r} is for another question or answers"]))

    def start(self) -> None:
        """Write config.json and inputs.json and clean a torn last line: the run now owns files here."""
        try:
            for name, data in ((CONFIG, self.config), (INPUTS, self.inputs.to_json())):
                self.wrote.append(name)
                atomic_write_json(self.folder.file(name), data)
            self._rewrite_clean()
        except OSError as exc:
            raise _unusable(self.path, exc) from None

    def repair_config(self) -> None:
        """A finished run whose config.json is unreadable gets it back (``report --verify`` needs it)."""
        if self.folder.config() is None:
            log.warning("%s was unreadable: written again from this run's config", self.folder.file(CONFIG))
            try:
                atomic_write_json(self.folder.file(CONFIG), self.config)
            except OSError as exc:
                raise _unusable(self.path, exc) from None

    def _rewrite_clean(self) -> None:
        path = self.folder.file(PREDICTIONS)
        if path.is_file():
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.done.values())
            if path.read_text(encoding="utf-8") != text:
                atomic_write_text(path, text)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append whole lines in one write and flush (a crash leaves at most a torn last line)."""
        try:
            with open(self.folder.file(PREDICTIONS), "a", encoding="utf-8") as handle:
                handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                handle.flush()
        except OSError as exc:
            raise _unusable(self.path, exc) from None
        for row in rows:
            self.done[row["id"]] = row

    def save_segment(self, segment: dict[str, Any]) -> None:
        """This process's segment (time, counts, memory peaks so far), kept after every batch."""
        self.segment = segment
        try:
            atomic_write_json(self.folder.file(SEGMENTS), [*self.previous_segments, segment])
        except OSError as exc:
            raise _unusable(self.path, exc) from None

    def all_segments(self) -> list[dict[str, Any]]:
        return [*self.previous_segments, *([self.segment] if self.segment else [])]

    def finish(self, results: dict[str, Any], memory: dict[str, Any]) -> None:
        """Write memory_usage.json then results.json (the mark of a finished run)."""
        try:
            atomic_write_json(self.folder.file(MEMORY), memory)
            atomic_write_json(self.folder.file(RESULTS), Results.model_validate(results).model_dump())
        except OSError as exc:
            raise _unusable(self.path, exc) from None

    def close(self, discard: bool = False) -> None:
        """Unlock. A session that wrote nothing removes the folders it created (if still empty); with
        ``discard`` (a refused run) it first removes the files it wrote, if it created the folder and
        no answer is in it: never a file of another run."""
        if self.closed:
            return
        self.closed = True
        if discard and self.path in self.lock.created and not self.folder.has_answers():
            for name in (*self.wrote, LOG, SEGMENTS):
                self.folder.file(name).unlink(missing_ok=True)
            self.wrote = []
        self.lock.release(tidy=not self.wrote)


def aggregate_segments(segments: list[dict[str, Any]]) -> dict[str, Any]:
    """Time summed and memory peaks as maxima over the segments of a run."""
    totals = {"generation_seconds": 0.0, "generated_examples": 0, "generated_tokens": 0, "retrieval_seconds": 0.0}
    memory: dict[str, dict[str, float]] = {}
    for segment in segments:
        for key in totals:
            totals[key] += segment.get(key) or 0
        for component, peaks in (segment.get("memory") or {}).items():
            merged = memory.setdefault(component, {})
            for key, value in (peaks or {}).items():
                if isinstance(value, (int, float)):
                    merged[key] = max(merged.get(key, value), value)
    return {**totals, "memory": memory, "segments": len(segments)}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
