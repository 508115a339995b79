"""Dataset formats for every stage: read rows, detect the format, validate, convert to canonical records.

Every stage reads its data through one of three loaders (``limit`` stops after that many records;
:func:`load_any` reads every row as its own format, for ``rlhf data inspect``)::

    pairs, report = load_preferences("hh.jsonl.gz")          # reward model, DPO
    examples, report = load_sft("sft.parquet", limit=1000)    # SFT
    prompts, report = load_prompts("owner/dataset", split="test", on_error="skip")  # PPO rollouts
    print(report.summary())
    # loaded 1795 of 1800 rows (preference); skipped 5: chosen identical to rejected (5)

Sources (see :func:`read_rows`)
    ``.jsonl``, ``.json`` (a JSON array of objects, or JSON lines), either optionally gzipped (``.gz``),
    ``.parquet``, a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, an
    in-memory list of dicts, or else a Hugging Face hub dataset name (a missing path that is plainly a
    path, such as ``data/x.jsonl`` or ``./x``, is reported at once instead). Each row carries a location
    that every error message starts with: ``data.jsonl:12`` (lines count from 1, as editors do),
    ``data.parquet:row 5``, ``saved_dir[train]:row 5`` or ``row 5`` (rows count from 0, as ``ds[5]`` does).

Formats (TRL's dataset formats, https://huggingface.co/docs/trl/dataset_formats, plus HH-RLHF)
    ====================  ==========================================  ==============================
    format                keys                                        canonical record
    ====================  ==========================================  ==============================
    language_modeling     ``text``, ``messages`` or ``conversations``  :class:`LMExample`
    prompt_completion     ``prompt``, ``completion``                  :class:`PromptCompletion`
    prompt_only           ``prompt``                                  :class:`PromptOnly`
    preference            ``prompt``, ``chosen``, ``rejected``        :class:`Preference`
    implicit_preference   ``chosen``, ``rejected``                    :class:`Preference`
    unpaired_preference   ``prompt``, ``completion``, ``label``       :class:`UnpairedPreference`
    stepwise_supervision  ``prompt``, ``completions``, ``labels``     :class:`StepwiseSupervision`
    ====================  ==========================================  ==============================

    Each text field is either a string ("standard") or a list of messages ("conversational"); the
    fields of one row are all of one kind. A message has a ``role`` (system, developer, user, assistant)
    and a string ``content``; an assistant message may carry its reasoning as ``thinking`` or
    ``reasoning_content``, which goes to the chat template with it. Tool calls, tool messages, a
    ``tools`` column, structured (list) contents and any other message key are refused by name, never
    dropped. ``conversations`` with ``from``/``value`` messages (ShareGPT) are read as ``messages``, as
    TRL's ``maybe_convert_to_chatml`` does. Completions and responses come from the assistant. A prompt
    ends with a user message, or with an assistant message (a prefill, which the completion continues:
    ``rlhf.stages.sft.continued``); one ending with a system or developer message is refused, as TRL refuses it.

    Implicit prompts are split as TRL's ``extract_prompt`` splits them: two strings at their longest
    common prefix (less a final space, which goes to both responses: "Rivers run downhill." / "Rivers run
    uphill." give "Rivers run", " downhill.", " uphill."), two conversations at their shared leading
    messages. Refused instead: a pair with no shared prompt, one response the start of the other (TRL
    would cut inside the shared text), responses that would hold a user message, and a shared prompt
    ending with an assistant message (is the response a continuation or a new turn? a ``prompt``
    field says). Two HH-RLHF
    transcripts (``"\n\nHuman: ...\n\nAssistant: ..."``) are parsed into conversations and must agree on
    every turn before the final Assistant response. So the explicit and implicit forms of a pair give
    equal records.

    Unpaired preference and stepwise rows are read as TRL's documented conversions read them:
    :func:`load_sft` keeps the ``label: true`` rows (and the stepwise rows whose steps are all true, the
    steps joined) and counts the rest as left out; :func:`load_prompts` takes every row's prompt;
    :func:`load_preferences` refuses both (one completion with a label is no pair). Preference rows may
    carry a finite number ``margin``. ``chat_template_kwargs`` (a dict, on conversational rows) is kept in
    ``record.meta`` and passed to the chat template with that row. Other keys are kept in
    ``record.meta``. A key whose value is ``None`` counts as absent, in rows and in messages (Parquet and
    ``datasets`` fill missing columns and keys with None). The first valid row fixes the format; a later
    row of another format is an error ("mixed formats").

Canonical records
    Frozen dataclasses compared with plain ``==`` (``source``, the row's location, is left out of the
    comparison). A conversation is a ``tuple`` of :class:`Message`, a read-only ``dict`` (``role``,
    ``content`` and maybe a reasoning key): it compares equal to the plain dict, serialises with ``json``
    and goes straight into ``tokenizer.apply_chat_template``, and it can be hashed, so records can be
    put in sets. :func:`to_row` writes a record back as a TRL row (message lists as lists of plain dicts).

Errors and the skip policy
    Every problem raises :class:`DataError` (a ``ValueError``) whose message starts with the location and
    names the field, e.g. ``data.jsonl:7: field 'chosen': expected a string or a list of messages, got int``.
    With ``on_error="raise"`` (the default) a loader raises the first one. With ``on_error="skip"`` it
    skips the bad row and counts it in :class:`LoadReport` by reason (``report.skipped``), keeping up to
    five full messages per reason (``report.examples``); valid rows that a loader does not use are
    counted as left out (``report.left_out``); nothing is dropped silently and
    ``n_loaded + n_left_out + n_skipped == n_rows``. Problems with the source as a whole always raise, whatever
    ``on_error`` says: a missing or unreadable source, a corrupt gzip stream, a malformed JSON array (it
    cannot be resumed), a source with no rows, data of a format the loader does not take, and a source
    whose rows were all skipped.
"""

from __future__ import annotations

import gzip
import importlib
import json
import math
import numbers
import os
import re
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from rlhf.errors import UsageError

# Data made by a source of its own, by name: ``module:attribute``, an object with the methods a stage
# uses (``demonstrations(n, seed)``, ``prompts(n, seed)``, ``eval_prompts(n)``, and a judge:
# ``judge(prompts, responses, meta)``, ``judge_model(model, tokenizer, n)``,
# ``judge_against(prompts, meta, responses, reference)``; see ``rlhf.lab.source``). The lab registers
# here; nothing in this module knows what the lab is.
SOURCES = {"lab": "rlhf.lab.source:LAB"}


def named_source(name: str) -> Any | None:
    """The data source registered as ``name`` (``SOURCES``), or None: ``name`` is a file, folder or hub name."""
    spec = SOURCES.get(name) if isinstance(name, str) else None
    if spec is None:
        return None
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


#: Format name -> the keys that identify it (checked in this order by :func:`detect_format`).
FORMATS: dict[str, str] = {
    "preference": "{'prompt', 'chosen', 'rejected'}",
    "implicit_preference": "{'chosen', 'rejected'}",
    "stepwise_supervision": "{'prompt', 'completions', 'labels'}",
    "unpaired_preference": "{'prompt', 'completion', 'label'}",
    "prompt_completion": "{'prompt', 'completion'}",
    "prompt_only": "{'prompt'}",
    "language_modeling": "{'text'}, {'messages'} or {'conversations'}",
}
ROLES = ("system", "developer", "user", "assistant")
REASONING_KEYS = ("thinking", "reasoning_content")  # on assistant messages; passed to the chat template
OnError = Literal["raise", "skip"]


class DataError(UsageError, ValueError):
    """A problem with the data, located: ``"<location>: field '<field>': <problem>"``.

    ``reason`` is a short, row-independent category (``"chosen identical to rejected"``) under which
    :class:`LoadReport` counts skipped rows.
    """

    def __init__(self, location: str, problem: str, *, reason: str, field: str | None = None) -> None:
        self.location, self.problem, self.reason, self.field = location, problem, reason, field
        where = f"{location}: field '{field}'" if field else location
        super().__init__(f"{where}: {problem}")


# --- Canonical records --------------------------------------------------------------------------------------


class Message(dict):
    """One chat message: a read-only, hashable ``dict`` with the keys ``role`` and ``content``, and on an
    assistant message optionally one reasoning key, ``thinking`` or ``reasoning_content`` (the name the
    data used, since chat templates differ in which one they render)."""

    __slots__ = ()

    def __init__(
        self, role: str, content: str, thinking: str | None = None, reasoning_content: str | None = None
    ) -> None:
        super().__init__(role=role, content=content)
        for key, value in (("thinking", thinking), ("reasoning_content", reasoning_content)):
            if value is not None:
                dict.__setitem__(self, key, value)

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))

    def __reduce__(self) -> tuple[type[Message], tuple[Any, ...]]:  # pickle and copy without __setitem__
        return (Message, (self["role"], self["content"], self.get("thinking"), self.get("reasoning_content")))

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Message is read-only; build a new Message or use dict(message)")

    __setitem__ = __delitem__ = __ior__ = _read_only  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]


#: A conversation: messages in order. Records always hold tuples (immutable, hashable).
Conversation = tuple[Message, ...]


@dataclass(frozen=True)
class LMExample:
    """Language modeling: exactly one of ``text`` (standard) or ``messages`` (conversational) is set."""

    text: str | None = None
    messages: Conversation | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class PromptCompletion:
    """A prompt and its completion: two strings, or a conversation and a list of assistant messages."""

    prompt: str | Conversation
    completion: str | Conversation
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class PromptOnly:
    """A prompt alone (a string or a conversation), e.g. for PPO rollouts."""

    prompt: str | Conversation
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class Preference:
    """A preference pair: ``chosen`` is preferred to ``rejected`` as a response to ``prompt``.

    Standard: three strings. Conversational: ``prompt`` is a conversation, ``chosen`` and ``rejected`` are
    conversations of assistant messages (one message when parsed from an implicit-prompt pair).
    ``margin`` is the optional preference strength some reward-model losses use.
    """

    prompt: str | Conversation
    chosen: str | Conversation
    rejected: str | Conversation
    margin: float | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class UnpairedPreference:
    """One completion with a label: ``True`` if it is a good response to ``prompt``, ``False`` if not
    (TRL's unpaired preference type, read by its KTO and BCO trainers)."""

    prompt: str | Conversation
    completion: str | Conversation
    label: bool
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class StepwiseSupervision:
    """A prompt and the steps of one completion, each step labelled correct (``True``) or not
    (TRL's stepwise supervision type, read by its PRM trainer; strings only, as TRL documents it)."""

    prompt: str
    completions: tuple[str, ...]
    labels: tuple[bool, ...]
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    source: str = field(default="", compare=False)


Record = LMExample | PromptCompletion | PromptOnly | Preference | UnpairedPreference | StepwiseSupervision
R = TypeVar("R")


# --- Reading sources: (location, row) pairs -----------------------------------------------------------------

Source = str | os.PathLike | Iterable[Mapping[str, Any]]
RowOrError = tuple[str, "dict[str, Any] | DataError"]  # a row, or why it could not be read


def read_rows(source: Source, split: str = "train") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, row)`` for every row of ``source``; raise :class:`DataError` on the first problem.

    ``source`` is a data file, a ``save_to_disk`` directory, a hub dataset name or an in-memory iterable
    of dicts (see the module docstring). ``split`` picks the split of a ``DatasetDict`` or hub dataset
    and is ignored for files and in-memory rows.
    """
    for location, row in _iter_rows(source, split):
        if isinstance(row, DataError):
            raise row
        yield location, row


def _iter_rows(source: Source, split: str) -> Iterator[RowOrError]:
    """Like :func:`read_rows`, but a row that cannot be read is yielded as its ``DataError`` so that a
    loader can skip it; problems with the source as a whole are raised."""
    if isinstance(source, Mapping):
        raise TypeError("source is a single row (a mapping); pass a list of rows")
    if isinstance(source, (str, os.PathLike)):
        label, path = os.fspath(source), Path(source).expanduser()
        if path.is_dir():
            rows = _iter_saved_dataset(path, split)
        elif path.is_file():
            rows = _iter_file(path)
        elif isinstance(source, str) and not _looks_like_path(source):
            rows = _iter_hub(source, split)
        else:
            raise DataError(
                label, "path does not exist locally (no such file or directory)", reason="source not found"
            )
    else:
        label, rows = "rows", _iter_memory(source)
    empty = True
    for item in rows:
        empty = False
        yield item
    if empty:
        raise DataError(label, "no rows: the source is empty", reason="no rows")


_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".gz", ".csv", ".txt", ".arrow")


def _looks_like_path(name: str) -> bool:
    """A missing file named like this is a typo, not a hub dataset: don't wait for the hub to say so."""
    return name.startswith(("/", "./", "../", "~")) or name.lower().endswith(_FILE_SUFFIXES)


def _iter_file(path: Path) -> Iterator[RowOrError]:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".jsonl"):
        yield from _iter_json_lines(_read_lines(path), str(path))
    elif name.endswith(".json"):
        data = b"".join(_read_lines(path)).removeprefix(_BOM)  # a JSON array is parsed whole
        if data.lstrip().startswith(b"["):
            yield from _iter_json_array(_decode(data, str(path)), str(path))
        else:
            yield from _iter_json_lines(data.split(b"\n"), str(path))
    elif name.endswith(".parquet"):
        yield from _iter_parquet(path)
    else:
        raise DataError(
            str(path),
            "unsupported file type; expected .jsonl, .json (optionally .gz), .parquet "
            "or a directory written by save_to_disk",
            reason="unsupported file type",
        )


def _read_lines(path: Path) -> Iterator[bytes]:
    """Yield the raw lines of a file, gunzipping ``.gz``; a corrupt stream raises at the line it breaks."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    lineno = 0  # lines read so far
    try:
        with opener(path, "rb") as file:
            for line in file:
                lineno += 1
                yield line
    except (OSError, EOFError, zlib.error) as error:
        problem = "corrupt or truncated gzip stream" if opener is gzip.open else "cannot read the file"
        raise DataError(
            f"{path}:{lineno + 1}", f"{problem} ({type(error).__name__}: {error})", reason="unreadable file"
        ) from error


def _decode(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}:{line}", f"not valid UTF-8 ({error.reason})", reason="not UTF-8") from error


def _iter_json_lines(lines: Iterable[bytes], path: str) -> Iterator[RowOrError]:
    """One JSON object per line; blank lines are not rows."""
    for lineno, line in enumerate(lines, 1):
        location = f"{path}:{lineno}"
        try:
            text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a leading BOM is dropped
        except UnicodeDecodeError as error:
            problem = f"not valid UTF-8 (byte {error.start + 1} of the line: {error.reason})"
            yield location, DataError(location, problem, reason="not UTF-8")
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text.rstrip("\r\n"))  # without the newline, an early end is still on this line
        except json.JSONDecodeError as error:
            problem = f"bad JSON: {error.msg} (column {error.colno})"
            yield location, DataError(location, problem, reason="bad JSON")
            continue
        except RecursionError:
            yield location, DataError(location, _TOO_DEEP, reason="nested too deeply")
            continue
        yield location, _object_or_error(row, location)


_SPACE = re.compile(r"[ \t\r\n]*")
_BOM = b"\xef\xbb\xbf"
_TOO_DEEP = "bad JSON: nested too deeply for Python's parser (thousands of levels of arrays or objects)"


def _iter_json_array(text: str, path: str) -> Iterator[RowOrError]:
    """The objects of a JSON array, each located by the line it starts on."""
    decoder = json.JSONDecoder()

    def bad_json(pos: int, problem: str) -> DataError:
        line = text.count("\n", 0, pos) + 1
        return DataError(f"{path}:{line}", f"bad JSON: {problem}", reason="bad JSON")

    pos = _SPACE.match(text, text.index("[") + 1).end()
    line, counted = 1, 0  # the line number of `pos`, counted incrementally up to `counted`
    while not text.startswith("]", pos):  # an empty array, or the ']' after the last item
        line, counted = line + text.count("\n", counted, pos), pos
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as error:
            raise bad_json(error.pos, f"{error.msg} (column {error.colno})") from error
        except RecursionError:
            raise bad_json(pos, _TOO_DEEP.removeprefix("bad JSON: ")) from None
        yield f"{path}:{line}", _object_or_error(item, f"{path}:{line}")
        pos = _SPACE.match(text, end).end()
        if text.startswith(",", pos):
            pos = _SPACE.match(text, pos + 1).end()
            if text.startswith("]", pos):
                raise bad_json(pos, "trailing comma in the array")
        elif not text.startswith("]", pos):
            raise bad_json(pos, "expected ',' or ']' after an array item")
    if _SPACE.match(text, pos + 1).end() != len(text):
        raise bad_json(pos, "extra data after the array")


def _as_object(row: Any, location: str) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise DataError(
            location, f"expected a JSON object, got {_type_name(row)}", reason="not a JSON object"
        )
    return dict(row)


def _object_or_error(row: Any, location: str) -> dict[str, Any] | DataError:
    try:
        return _as_object(row, location)
    except DataError as error:
        return error


def _iter_parquet(path: Path) -> Iterator[RowOrError]:
    import pyarrow
    import pyarrow.parquet as pq

    index = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches():
            for row in batch.to_pylist():
                yield f"{path}:row {index}", row
                index += 1
    except (pyarrow.ArrowException, OSError) as error:
        raise DataError(
            f"{path}:row {index}",
            f"not a readable Parquet file ({type(error).__name__}: {error})",
            reason="unreadable file",
        ) from error


def _iter_saved_dataset(path: Path, split: str) -> Iterator[RowOrError]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises several types here; all mean "not a saved dataset"
        raise DataError(
            str(path),
            f"not a dataset directory written by save_to_disk ({type(error).__name__}: {error})",
            reason="unreadable dataset",
        ) from error
    label = str(path)
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(
                label, f"no split '{split}'; available splits: {sorted(data)}", reason="no such split"
            )
        data, label = data[split], f"{path}[{split}]"
    yield from _iter_dataset(data, label)


def _iter_hub(name: str, split: str) -> Iterator[RowOrError]:
    import datasets

    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as error:  # offline, no such dataset, no such split...
        raise DataError(
            name,
            "path does not exist locally and the Hugging Face hub could not be reached "
            f"(or has no such dataset): {type(error).__name__}: {error}",
            reason="source not found",
        ) from error
    yield from _iter_dataset(data, f"{name}[{split}]")


def _iter_dataset(data: Iterable[Mapping[str, Any]], label: str) -> Iterator[RowOrError]:
    for index, row in enumerate(data):
        yield f"{label}:row {index}", dict(row)


def _iter_memory(rows: Iterable[Any]) -> Iterator[RowOrError]:
    for index, row in enumerate(rows):
        yield f"row {index}", _object_or_error(row, f"row {index}")


# --- Format detection and field validation ------------------------------------------------------------------


def detect_format(row: Mapping[str, Any], location: str = "row") -> str:
    """Name the format of ``row`` (one of :data:`FORMATS`) from its keys; ``None`` values count as absent.

    Only the keys are looked at; :func:`parse_row` checks the values.
    """
    row = _as_object(row, location)
    keys = {key for key, value in row.items() if value is not None}
    if keys & {"chosen", "rejected"}:
        return "preference" if "prompt" in keys else "implicit_preference"
    if keys & {"completions", "labels"}:
        return "stepwise_supervision"
    if "completion" in keys:
        return "unpaired_preference" if "label" in keys else "prompt_completion"
    if "prompt" in keys:
        return "prompt_only"
    if keys & {"text", "messages", "conversations"}:
        return "language_modeling"
    nulls = sorted(key for key, value in row.items() if value is None)
    found = f"{sorted(keys)}" + (f" (null: {nulls})" if nulls else "")
    expected = "; ".join(f"{name} {fields}" for name, fields in FORMATS.items())
    raise DataError(
        location,
        f"unrecognised row format: found keys {found}; expected {expected}",
        reason="unrecognised format",
    )


def _type_name(value: Any) -> str:
    return type(value).__name__


def _wrong_type(location: str, name: str, expected: str, value: Any) -> DataError:
    problem = f"expected {expected}, got {_type_name(value)}"
    return DataError(location, problem, field=name, reason=f"wrong type for '{name}'")


def _required(row: Mapping[str, Any], name: str, location: str) -> Any:
    value = row.get(name)
    if value is None:
        raise DataError(location, "missing required field", field=name, reason=f"missing field '{name}'")
    return value


def _text(value: Any, name: str, location: str) -> str:
    """A non-blank string, kept exactly as given (leading spaces matter to tokenizers)."""
    if not isinstance(value, str):
        raise _wrong_type(location, name, "a string", value)
    if not value.strip():
        raise DataError(location, "empty or whitespace-only string", field=name, reason=f"empty '{name}'")
    return value


_MESSAGE_KEYS = ("role", "content", *REASONING_KEYS)
_TOOL_USE = (
    "tool use is not supported: rlhf trains on conversations of system, developer, user and assistant "
    "text messages (TRL's SFT reads tool calls with a 'tools' column); remove the tool turns"
)


def _message(value: Any, index: int, name: str, location: str) -> Message:
    """Message ``index`` (1-based) of field ``name``: a role, a string content and, on an assistant
    message, at most one reasoning string (``thinking`` or ``reasoning_content``). Any other key, tool
    calls and tool messages are refused by name, so that nothing in a message is dropped unseen."""

    def bad(problem: str, reason: str) -> DataError:
        return DataError(location, f"message {index}: {problem}", field=name, reason=f"{reason} in '{name}'")

    if not isinstance(value, Mapping):
        raise bad(f"expected a dict with 'role' and 'content', got {_type_name(value)}", "invalid message")
    value = {key: item for key, item in value.items() if item is not None}  # Arrow fills absent keys
    role = value.get("role")
    if role is None:
        raise bad("missing 'role'", "invalid message")
    if role == "tool" or "tool_calls" in value:
        what = "a tool message (role 'tool')" if role == "tool" else "an assistant message with 'tool_calls'"
        raise bad(f"{what}: {_TOOL_USE}", "tool use not supported")
    if role not in ROLES:
        sharegpt = (
            " (ShareGPT's 'human' and 'gpt' are kept as given, as TRL keeps them)"
            if role in ("human", "gpt")
            else ""
        )
        raise bad(f"unknown role {role!r}; expected one of {', '.join(ROLES)}{sharegpt}", "unknown role")
    content = value.get("content")
    if content is None:
        raise bad("missing 'content'", "invalid message")
    if isinstance(content, (list, tuple)):
        problem = (
            "structured content (a list of parts, e.g. images) is not supported; give 'content' as a string"
        )
        raise bad(problem, "structured content not supported")
    if not isinstance(content, str):
        raise bad(f"'content' must be a string, got {_type_name(content)}", "invalid message")
    if not content.strip():
        raise bad("empty or whitespace-only content", "empty message content")
    reasoning = {key: value[key] for key in REASONING_KEYS if key in value}
    if reasoning and role != "assistant":
        raise bad(
            f"'{next(iter(reasoning))}' on a {role} message; only assistant messages reason",
            "misplaced reasoning",
        )
    if len(reasoning) > 1:
        raise bad("has both 'thinking' and 'reasoning_content'; give one", "two reasoning fields")
    for key, text in reasoning.items():
        if not isinstance(text, str):
            raise bad(f"'{key}' must be a string, got {_type_name(text)}", "invalid message")
    extra = [key for key in value if key not in _MESSAGE_KEYS]
    if extra:
        problem = (
            f"key {extra[0]!r} is not read (a message holds 'role', 'content' and, from the assistant, "
            "'thinking' or 'reasoning_content')"
        )
        raise bad(problem, "unsupported message key")
    return Message(role, content, **reasoning)


def _conversation(value: Any, name: str, location: str) -> Conversation:
    """A non-empty list of valid messages."""
    if not isinstance(value, (list, tuple)):
        raise _wrong_type(location, name, "a list of messages", value)
    if not value:
        raise DataError(location, "empty list of messages", field=name, reason=f"empty '{name}'")
    return tuple(_message(message, index, name, location) for index, message in enumerate(value, 1))


def _check_prompt_end(prompt: Conversation, name: str, location: str) -> Conversation:
    """A conversational prompt ends with a user message (the model answers it) or an assistant message
    (a prefill, which the completion continues); a system or developer message there is refused, as
    TRL's ``apply_chat_template`` refuses it."""
    role = prompt[-1]["role"]
    if role not in ("user", "assistant"):
        problem = (
            f"the prompt ends with a {role} message; a prompt ends with a user message, or with an "
            "assistant message that the response continues (a prefill)"
        )
        raise DataError(location, problem, field=name, reason=f"prompt ends with a {role} message")
    return prompt


def _prompt(value: Any, location: str) -> str | Conversation:
    """A prompt: a non-blank string (standard) or a conversation (conversational)."""
    if isinstance(value, str):
        return _text(value, "prompt", location)
    if isinstance(value, (list, tuple)):
        return _check_prompt_end(_conversation(value, "prompt", location), "prompt", location)
    raise _wrong_type(location, "prompt", "a string or a list of messages", value)


def _response(value: Any, name: str, location: str, prompt: str | Conversation) -> str | Conversation:
    """A completion, chosen or rejected response, of the same kind as the prompt; conversational
    responses are assistant messages only."""
    if not isinstance(value, (str, list, tuple)):
        raise _wrong_type(location, name, "a string or a list of messages", value)
    if isinstance(value, str) != isinstance(prompt, str):
        kind = "a string" if isinstance(prompt, str) else "a list of messages"
        problem = (
            f"expected {kind} like 'prompt' (a row is all standard or all conversational), "
            f"got {_type_name(value)}"
        )
        if isinstance(prompt, str) and name in ("chosen", "rejected"):
            problem += (
                "; TRL ignores a string prompt beside conversational chosen and rejected and takes their "
                "shared leading messages as the prompt: drop the 'prompt' column for that"
            )
        raise DataError(location, problem, field=name, reason="mixed standard and conversational fields")
    if isinstance(value, str):
        return _text(value, name, location)
    conversation = _conversation(value, name, location)
    for index, message in enumerate(conversation, 1):
        if message["role"] != "assistant":
            raise DataError(
                location,
                f"message {index} has role '{message['role']}'; a {name} must come from the assistant",
                field=name,
                reason=f"'{name}' not from the assistant",
            )
    reasoning = [key for key in REASONING_KEYS if key in conversation[0]]
    if prompt[-1]["role"] == "assistant" and reasoning:
        problem = (
            f"message 1 has '{reasoning[0]}', but it continues the prompt's final assistant message (a "
            "prefill), whose reasoning comes before its content: put the reasoning on the prefill"
        )
        raise DataError(location, problem, field=name, reason="reasoning in a prefill's continuation")
    return conversation


def _margin(value: Any, location: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise DataError(
            location, f"expected a finite number, got {value!r}", field="margin", reason="invalid margin"
        )
    return float(value)


def _label(value: Any, name: str, location: str) -> bool:
    if not isinstance(value, bool):
        raise DataError(
            location, f"expected true or false, got {value!r}", field=name, reason=f"invalid '{name}'"
        )
    return value


def _meta(row: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The keys of ``row`` that are not fields of its format."""
    return {key: value for key, value in row.items() if key not in fields}


# --- HH-RLHF transcripts and implicit-prompt pairs ----------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _is_hh(text: str) -> bool:
    """An HH-RLHF transcript starts with its Human turn (after any blank lines)."""
    return text.lstrip().startswith("Human:")


def _hh_transcript(text: str, name: str, location: str) -> Conversation:
    """Parse ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` into messages (contents stripped).

    The leading blank lines may be missing. The transcript must start with a Human turn and end with a
    non-empty Assistant turn.
    """

    def bad(problem: str) -> DataError:
        return DataError(
            location, f"HH-RLHF transcript {problem}", field=name, reason=f"HH transcript {problem}"
        )

    _text(text, name, location)
    parts = _HH_TURN.split("\n\n" + text.lstrip())  # ["", speaker, content, speaker, content, ...]
    if parts[0] or len(parts) < 3 or parts[1] != "Human":
        raise bad("does not start with a Human turn")
    turns = [(_HH_ROLES[speaker], content.strip()) for speaker, content in zip(parts[1::2], parts[2::2])]
    if all(role != "assistant" for role, _ in turns):
        raise bad("has no Assistant turn")
    if turns[-1][0] != "assistant":
        raise bad("does not end with an Assistant turn")
    if not turns[-1][1]:
        raise bad("has an empty final Assistant response")
    return tuple(
        _message({"role": role, "content": content}, index, name, location)
        for index, (role, content) in enumerate(turns, 1)
    )


def _first_difference(chosen: Sequence[Any], rejected: Sequence[Any], location: str) -> int:
    """The index of the first item where ``chosen`` and ``rejected`` differ (the end of their shared
    prompt); refuse a pair with nothing to split (equal, one the start of the other, nothing shared)."""
    if chosen == rejected:
        raise DataError(location, "chosen is identical to rejected", reason="chosen identical to rejected")
    index = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), None)
    if index is None:
        shorter = "chosen" if len(chosen) < len(rejected) else "rejected"
        problem = (
            f"{shorter} is the start of the other, so no response is left of it once the shared prompt is "
            "taken; add a 'prompt' field"
        )
        raise DataError(location, problem, reason="one response starts the other")
    if index == 0:
        problem = "no shared prompt: chosen and rejected differ from the start; add a 'prompt' field"
        raise DataError(location, problem, reason="no shared prompt")
    return index


def _split_text(chosen: str, rejected: str, location: str) -> tuple[str, str, str]:
    """Split a standard implicit-prompt pair like TRL's ``extract_prompt``: the prompt is the longest
    common prefix, less a space it ends with (the space starts both responses)."""
    index = _first_difference(chosen, rejected, location)
    if chosen[index - 1] == " ":
        index -= 1
    prompt = chosen[:index]
    if not prompt.strip():
        problem = "no shared prompt: chosen and rejected share only spaces; add a 'prompt' field"
        raise DataError(location, problem, reason="no shared prompt")
    return prompt, _text(chosen[index:], "chosen", location), _text(rejected[index:], "rejected", location)


def _split_pair(
    chosen: Conversation, rejected: Conversation, location: str
) -> tuple[Conversation, Conversation, Conversation]:
    """Split a conversational implicit-prompt pair like TRL's ``extract_prompt``: the messages both
    start with are the prompt, the rest of each is its response (assistant messages only, here)."""
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        if conversation[-1]["role"] != "assistant":
            problem = f"the last message is from the {conversation[-1]['role']}, not the assistant"
            raise DataError(location, problem, field=name, reason=f"'{name}' does not end with the assistant")
    index = _first_difference(chosen, rejected, location)
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        turn = next(
            (i for i in range(index, len(conversation)) if conversation[i]["role"] != "assistant"), None
        )
        if turn is not None:
            problem = (
                f"chosen and rejected differ before the final assistant turn, at message {index + 1} "
                f"(message {turn + 1} of '{name}' is from the {conversation[turn]['role']}, so it would be "
                "part of the response); a response holds assistant messages only: add a 'prompt' field"
            )
            raise DataError(
                location, problem, reason="chosen and rejected differ before the final assistant turn"
            )
    prompt = _check_prompt_end(chosen[:index], "chosen", location)
    if prompt[-1]["role"] == "assistant":
        problem = (
            f"chosen and rejected share assistant message {index} and differ after it: their shared "
            "prompt would end with an assistant message, which rlhf reads as a prefill that the response "
            "continues; add a 'prompt' field to say which it is"
        )
        raise DataError(location, problem, reason="shared prompt ends with an assistant message")
    return prompt, chosen[index:], rejected[index:]


# --- Rows -> records, one parser per format -----------------------------------------------------------------

_PREFERENCE_FIELDS = ("prompt", "chosen", "rejected", "margin")
_LM_FIELDS = ("text", "messages", "conversations")


def _from_value(value: Any) -> Any:
    """ShareGPT-style messages (``from``, ``value``) as ``role`` and ``content``, as TRL's
    ``maybe_convert_to_chatml`` renames them (the role names are kept as given)."""
    if not isinstance(value, (list, tuple)):
        return value
    renamed = []
    for message in value:
        if isinstance(message, Mapping):
            message = {
                {"from": "role", "value": "content"}.get(key, key): item for key, item in message.items()
            }
        renamed.append(message)
    return renamed


def _parse_language_modeling(row: Mapping[str, Any], location: str) -> LMExample:
    meta = _meta(row, _LM_FIELDS)
    given = [name for name in _LM_FIELDS if row.get(name) is not None]
    if len(given) > 1:
        both = f"both '{given[0]}' and '{given[1]}'"
        raise DataError(location, f"has {both}; give exactly one", reason=both)
    if given == ["text"]:
        return LMExample(text=_text(row["text"], "text", location), meta=meta, source=location)
    name = given[0]
    value = _from_value(row[name]) if name == "conversations" else row[name]
    return LMExample(messages=_conversation(value, name, location), meta=meta, source=location)


def _parse_prompt_completion(row: Mapping[str, Any], location: str) -> PromptCompletion:
    prompt = _prompt(_required(row, "prompt", location), location)
    completion = _response(_required(row, "completion", location), "completion", location, prompt)
    return PromptCompletion(prompt, completion, meta=_meta(row, ("prompt", "completion")), source=location)


def _parse_prompt_only(row: Mapping[str, Any], location: str) -> PromptOnly:
    prompt = _prompt(_required(row, "prompt", location), location)
    return PromptOnly(prompt, meta=_meta(row, ("prompt",)), source=location)


def _parse_unpaired_preference(row: Mapping[str, Any], location: str) -> UnpairedPreference:
    prompt = _prompt(_required(row, "prompt", location), location)
    completion = _response(_required(row, "completion", location), "completion", location, prompt)
    label = _label(row["label"], "label", location)
    meta = _meta(row, ("prompt", "completion", "label"))
    return UnpairedPreference(prompt, completion, label, meta=meta, source=location)


def _parse_stepwise_supervision(row: Mapping[str, Any], location: str) -> StepwiseSupervision:
    prompt = _required(row, "prompt", location)
    if not isinstance(prompt, str):
        problem = (
            f"expected a string, got {_type_name(prompt)}: stepwise supervision is standard (strings) only"
        )
        raise DataError(location, problem, field="prompt", reason="conversational stepwise supervision")
    prompt = _text(prompt, "prompt", location)
    steps, labels = _required(row, "completions", location), _required(row, "labels", location)
    if not isinstance(steps, (list, tuple)) or not steps:
        raise _wrong_type(location, "completions", "a non-empty list of strings", steps)
    if not isinstance(labels, (list, tuple)) or len(labels) != len(steps):
        length = len(labels) if isinstance(labels, (list, tuple)) else _type_name(labels)
        problem = f"expected one true or false per step ({len(steps)}), got {length}"
        raise DataError(location, problem, field="labels", reason="invalid 'labels'")
    steps = tuple(_text(step, "completions", location) for step in steps)
    labels = tuple(_label(label, "labels", location) for label in labels)
    meta = _meta(row, ("prompt", "completions", "labels"))
    return StepwiseSupervision(prompt, steps, labels, meta=meta, source=location)


def _parse_preference(row: Mapping[str, Any], location: str) -> Preference:
    prompt = _prompt(_required(row, "prompt", location), location)
    chosen = _response(_required(row, "chosen", location), "chosen", location, prompt)
    rejected = _response(_required(row, "rejected", location), "rejected", location, prompt)
    return _preference(prompt, chosen, rejected, row, location)


def _parse_implicit_preference(row: Mapping[str, Any], location: str) -> Preference:
    chosen, rejected = _required(row, "chosen", location), _required(row, "rejected", location)
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, (str, list, tuple)):
            raise _wrong_type(location, name, "a string or a list of messages", value)
    if isinstance(chosen, str) != isinstance(rejected, str):
        problem = "expected chosen and rejected of one kind, both strings or both lists of messages"
        raise DataError(
            location, problem, field="rejected", reason="mixed standard and conversational fields"
        )
    if isinstance(chosen, str) and (_is_hh(chosen) or _is_hh(rejected)):
        prompt, chosen, rejected = _split_hh(chosen, rejected, location)
    elif isinstance(chosen, str):
        chosen, rejected = _text(chosen, "chosen", location), _text(rejected, "rejected", location)
        prompt, chosen, rejected = _split_text(chosen, rejected, location)
    else:
        chosen, rejected = (
            _conversation(chosen, "chosen", location),
            _conversation(rejected, "rejected", location),
        )
        prompt, chosen, rejected = _split_pair(chosen, rejected, location)
    return _preference(prompt, chosen, rejected, row, location)


def _split_hh(chosen: str, rejected: str, location: str) -> tuple[Conversation, Conversation, Conversation]:
    """Two HH-RLHF transcripts as conversations, split like conversational pairs; by construction they
    differ only in the final Assistant response, so a pair that differs earlier is malformed."""
    pair = _split_pair(
        _hh_transcript(chosen, "chosen", location), _hh_transcript(rejected, "rejected", location), location
    )
    if len(pair[1]) > 1 or len(pair[2]) > 1:
        problem = (
            f"chosen and rejected differ before the final assistant turn, at message {len(pair[0]) + 1} "
            "(HH-RLHF transcripts differ only in the final Assistant response)"
        )
        raise DataError(
            location, problem, reason="chosen and rejected differ before the final assistant turn"
        )
    return pair


def _preference(
    prompt: str | Conversation,
    chosen: str | Conversation,
    rejected: str | Conversation,
    row: Mapping[str, Any],
    location: str,
) -> Preference:
    """The checks shared by both preference forms, then the record."""
    if chosen == rejected:
        raise DataError(location, "chosen is identical to rejected", reason="chosen identical to rejected")
    margin = _margin(row.get("margin"), location)
    return Preference(prompt, chosen, rejected, margin, meta=_meta(row, _PREFERENCE_FIELDS), source=location)


_PARSERS: dict[str, Callable[[Mapping[str, Any], str], Record]] = {
    "language_modeling": _parse_language_modeling,
    "prompt_completion": _parse_prompt_completion,
    "prompt_only": _parse_prompt_only,
    "preference": _parse_preference,
    "implicit_preference": _parse_implicit_preference,
    "unpaired_preference": _parse_unpaired_preference,
    "stepwise_supervision": _parse_stepwise_supervision,
}


def is_conversational(record: Record) -> bool:
    """Whether a record holds messages (rendered with a chat template) rather than plain strings."""
    if isinstance(record, LMExample):
        return record.messages is not None
    return not isinstance(record.prompt, str)


def _check_columns(row: Mapping[str, Any], record: Record, location: str) -> None:
    """Columns that go to the chat template: ``chat_template_kwargs`` (a dict, passed per row, on
    conversational rows) is kept; ``tools`` (tool schemas) is refused, as tool use is."""
    if row.get("tools") is not None:
        raise DataError(location, _TOOL_USE, field="tools", reason="tool use not supported")
    kwargs = row.get("chat_template_kwargs")
    if kwargs is None:
        return
    if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
        raise _wrong_type(location, "chat_template_kwargs", "a dict of chat template arguments", kwargs)
    if not is_conversational(record):
        problem = "a standard (string) row is not rendered with a chat template, so these would go nowhere"
        raise DataError(
            location, problem, field="chat_template_kwargs", reason="chat_template_kwargs on a standard row"
        )


def parse_row(row: Mapping[str, Any], location: str = "row", fmt: str | None = None) -> Record:
    """Validate ``row`` and convert it to its canonical record; ``fmt`` defaults to :func:`detect_format`."""
    fmt = fmt or detect_format(row, location)
    record = _PARSERS[fmt](row, location)
    _check_columns(row, record, location)
    return record


# --- Loaders ------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a loader read, kept, left out and skipped: ``n_loaded + n_left_out + n_skipped == n_rows``.

    Skipped rows are bad (``skipped``: reason -> count); rows left out are valid rows that the loader's
    reading of their format does not use (``left_out``: reason -> count), such as the ``label: false``
    rows of unpaired preference data in SFT.
    """

    format: str | None = None  # detected from the first valid row
    n_rows: int = 0  # rows read (up to `limit` loaded records)
    n_loaded: int = 0  # records returned
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> rows skipped for it
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first few error messages
    left_out: Counter[str] = field(default_factory=Counter)  # reason -> valid rows not used
    source: str = ""

    MAX_EXAMPLES: ClassVar[int] = 5

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def n_left_out(self) -> int:
        return sum(self.left_out.values())

    def add_skip(self, error: DataError) -> None:
        self.skipped[error.reason] += 1
        examples = self.examples.setdefault(error.reason, [])
        if len(examples) < self.MAX_EXAMPLES:
            examples.append(str(error))

    def summary(self) -> str:
        """E.g. ``loaded 1795 of 1800 rows (preference); skipped 5: chosen identical to rejected (5)``."""
        text = f"loaded {self.n_loaded} of {self.n_rows} rows ({self.format or 'format unknown'})"
        for what, counts in (("left out", self.left_out), ("skipped", self.skipped)):
            if counts:
                reasons = ", ".join(f"{reason} ({count})" for reason, count in counts.most_common())
                text += f"; {what} {sum(counts.values())}: {reasons}"
        return text


@dataclass(frozen=True)
class LeftOut:
    """What a loader's converter returns for a valid row it does not use, and why."""

    reason: str


# Why a loader does not read a format, and what to give it instead.
_NO_PAIR = {
    "unpaired_preference": "an unpaired row is one completion with a label (TRL's KTO and BCO read it)",
    "stepwise_supervision": "a stepwise row labels the steps of one completion (TRL's PRM trainer reads it)",
}


def _refusal_hint(loader: str, fmt: str) -> str:
    if loader == "load_preferences":
        why = _NO_PAIR.get(fmt, f"a {fmt} row holds no pair")
        return f"{why}; the reward model and DPO train on pairs: give {{prompt, chosen, rejected}} rows"
    if loader == "load_prompts":
        return "a language-modeling row has no prompt to sample from: give {prompt} rows"
    return "a prompt-only row has no completion to learn: give {prompt, completion} rows"


def _attempt(
    report: LoadReport, on_error: OnError, step: Callable[..., R], *args: Any
) -> tuple[bool, R | None]:
    """``(True, step(*args))``, or ``(False, None)`` with the row's error counted when skipping."""
    try:
        return True, step(*args)
    except DataError as error:
        if on_error == "raise":
            raise
        report.add_skip(error)
        return False, None


def _load(
    source: Source,
    split: str,
    on_error: OnError,
    limit: int | None,
    convert: Mapping[str, Callable[[Any], R | LeftOut]],
    loader: str,
) -> tuple[list[R], LoadReport]:
    """Read, validate and convert rows; ``convert`` maps each accepted format to a record converter,
    which may raise a row's :class:`DataError` or return :class:`LeftOut`."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of records or None, got {limit!r}")
    report = LoadReport(source="rows" if not isinstance(source, (str, os.PathLike)) else os.fspath(source))
    records: list[R] = []
    for location, row in _iter_rows(source, split):
        report.n_rows += 1
        ok, parsed = _attempt(report, on_error, _parse_in, row, location, report.format)
        if not ok:
            continue
        fmt, record = parsed
        if report.format is None:
            report.format = fmt
            if fmt not in convert:
                problem = f"{loader} reads {', '.join(convert)} data, not {fmt}"
                raise DataError(
                    location, f"{problem}: {_refusal_hint(loader, fmt)}", reason="format not accepted"
                )
        ok, result = _attempt(report, on_error, convert[fmt], record)
        if not ok:
            continue
        if isinstance(result, LeftOut):
            report.left_out[result.reason] += 1
            continue
        records.append(result)
        report.n_loaded += 1
        if report.n_loaded == limit:
            break
    if not records:
        raise DataError(report.source, f"no usable rows: {report.summary()}", reason="no usable rows")
    return records, report


def _parse_in(row: dict[str, Any] | DataError, location: str, first: str | None) -> tuple[str, Record]:
    """A row's format and record; a row of another format than the first valid row is an error."""
    if isinstance(row, DataError):
        raise row
    fmt = detect_format(row, location)
    if first is not None and fmt != first:
        raise DataError(
            location,
            f"mixed formats: this row is {fmt} but the first row was {first}",
            reason="mixed formats",
        )
    return fmt, parse_row(row, location, fmt)


def _same(record: R) -> R:
    return record


def _prompt_of(
    record: PromptCompletion | Preference | UnpairedPreference | StepwiseSupervision,
) -> PromptOnly:
    """The prompt of a record, for rollouts, which start a new assistant turn: a prefill is refused."""
    if not isinstance(record.prompt, str) and record.prompt[-1]["role"] == "assistant":
        problem = (
            "the prompt ends with an assistant message (a prefill); rollouts and sampling start a new "
            "assistant turn, so load_prompts reads prompts that end with a user message"
        )
        raise DataError(record.source, problem, field="prompt", reason="prefill prompt in rollouts")
    return PromptOnly(record.prompt, meta=record.meta, source=record.source)


def _chosen_as_completion(pair: Preference) -> PromptCompletion:
    return PromptCompletion(pair.prompt, pair.chosen, meta=pair.meta, source=pair.source)


def _good_completion(row: UnpairedPreference) -> PromptCompletion | LeftOut:
    """TRL's unpaired preference -> prompt-completion conversion: keep the ``label: true`` rows."""
    if not row.label:
        return LeftOut("label false")
    return PromptCompletion(row.prompt, row.completion, meta=row.meta, source=row.source)


def _correct_steps(row: StepwiseSupervision) -> PromptCompletion | LeftOut:
    """TRL's stepwise supervision -> prompt-completion conversion: keep the rows whose steps are all
    labelled true, their steps joined into one completion."""
    if not all(row.labels):
        return LeftOut("a step labelled false")
    return PromptCompletion(row.prompt, "".join(row.completions), meta=row.meta, source=row.source)


def load_preferences(
    source: Source, split: str = "train", on_error: OnError = "raise", limit: int | None = None
) -> tuple[list[Preference], LoadReport]:
    """Preference pairs (explicit or implicit prompt, HH-RLHF transcripts included) for reward models and DPO.

    ``limit`` stops after that many records are loaded. See the module docstring for ``on_error``.
    """
    convert = {"preference": _same, "implicit_preference": _same}
    return _load(source, split, on_error, limit, convert, "load_preferences")


def load_sft(
    source: Source, split: str = "train", on_error: OnError = "raise", limit: int | None = None
) -> tuple[list[PromptCompletion | LMExample], LoadReport]:
    """Supervised fine-tuning examples: language-modeling or prompt-completion rows; preference pairs
    (fully validated, then ``PromptCompletion(prompt, chosen)``); the ``label: true`` rows of unpaired
    preference data and the all-true rows of stepwise supervision (steps joined), the rest left out
    and counted, as TRL's conversions to prompt-completion do."""
    convert: dict[str, Callable[[Any], PromptCompletion | LMExample | LeftOut]] = {
        "language_modeling": _same,
        "prompt_completion": _same,
        "preference": _chosen_as_completion,
        "implicit_preference": _chosen_as_completion,
        "unpaired_preference": _good_completion,
        "stepwise_supervision": _correct_steps,
    }
    return _load(source, split, on_error, limit, convert, "load_sft")


def load_prompts(
    source: Source, split: str = "train", on_error: OnError = "raise", limit: int | None = None
) -> tuple[list[PromptOnly], LoadReport]:
    """Prompts for rollouts: the prompt of prompt-only, prompt-completion, preference, unpaired preference
    (every row, whatever its label) or stepwise rows (each row fully validated as its own format). A
    prompt that ends with an assistant message (a prefill) is a bad row here."""
    convert = {
        "prompt_only": _prompt_of,
        "prompt_completion": _prompt_of,
        "preference": _prompt_of,
        "implicit_preference": _prompt_of,
        "unpaired_preference": _prompt_of,
        "stepwise_supervision": _prompt_of,
    }
    return _load(source, split, on_error, limit, convert, "load_prompts")


def load_any(
    source: Source, split: str = "train", on_error: OnError = "raise", limit: int | None = None
) -> tuple[list[Record], LoadReport]:
    """Every row as the record of its own format (what ``rlhf data inspect`` checks)."""
    return _load(source, split, on_error, limit, {fmt: _same for fmt in FORMATS}, "load_any")


# --- Writing ------------------------------------------------------------------------------------------------


def _plain(value: str | Conversation) -> str | list[dict[str, str]]:
    """A field as TRL data: a string, or its messages as plain dicts (reasoning keys included)."""
    return value if isinstance(value, str) else [dict(message) for message in value]


def to_row(record: Record) -> dict[str, Any]:
    """A record as a TRL-format row (explicit prompt, messages as plain dicts), followed by its meta."""
    if isinstance(record, LMExample):
        fields: dict[str, Any] = (
            {"text": record.text} if record.text is not None else {"messages": _plain(record.messages or ())}
        )
    elif isinstance(record, PromptCompletion):
        fields = {"prompt": _plain(record.prompt), "completion": _plain(record.completion)}
    elif isinstance(record, PromptOnly):
        fields = {"prompt": _plain(record.prompt)}
    elif isinstance(record, Preference):
        fields = {
            "prompt": _plain(record.prompt),
            "chosen": _plain(record.chosen),
            "rejected": _plain(record.rejected),
        }
        if record.margin is not None:
            fields["margin"] = record.margin
    elif isinstance(record, UnpairedPreference):
        fields = {
            "prompt": _plain(record.prompt),
            "completion": _plain(record.completion),
            "label": record.label,
        }
    elif isinstance(record, StepwiseSupervision):
        fields = {
            "prompt": record.prompt,
            "completions": list(record.completions),
            "labels": list(record.labels),
        }
    else:
        raise TypeError(f"expected a record, got {_type_name(record)}")
    return {**fields, **{key: value for key, value in record.meta.items() if key not in fields}}


def write_jsonl(rows: Iterable[Mapping[str, Any] | Record], path: str | os.PathLike) -> int:
    """Write rows (dicts, or records via :func:`to_row`) as JSON lines, atomically; return the count.

    The lines go to a temporary file beside ``path`` that replaces it only once complete, so a crash
    midway leaves any previous file intact and never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    count = 0
    try:
        with open(temporary, "x", encoding="utf-8") as file:
            for row in rows:
                row = row if isinstance(row, Mapping) else to_row(row)
                file.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
                count += 1
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return count
