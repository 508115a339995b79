"""Tests for rlhf.data: sources, format detection, validation, the skip policy and writing.

Every fixture is written by the test into ``tmp_path``; the real HH-RLHF sample is read from ``../shared``
beside the repository and never copied.
"""

from __future__ import annotations

import copy
import gzip
import json
import pickle
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.data import (
    DataError,
    LMExample,
    LoadReport,
    Message,
    Preference,
    PromptCompletion,
    PromptOnly,
    detect_format,
    load_any,
    load_preferences,
    load_prompts,
    load_sft,
    parse_row,
    read_rows,
    to_row,
    write_jsonl,
)

HH_SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf-harmless-base.sample.jsonl.gz"


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def conv(*messages: dict[str, str]) -> tuple[Message, ...]:
    return tuple(Message(m["role"], m["content"]) for m in messages)


def hh(*turns: tuple[str, str]) -> str:
    """An HH-RLHF transcript from (speaker, text) turns."""
    return "".join(f"\n\n{speaker}: {text}" for speaker, text in turns)


# --- one case per format and variant: (rows, loader, format, expected records) ------------------------------

Q1, Q2 = msg("user", "Name a colour."), msg("user", "Name a number.")
CASES = {
    "lm_standard": (
        [{"text": "The sky is blue.", "id": 0}, {"text": "Grass is green.", "id": 1}],
        load_sft,
        "language_modeling",
        [
            LMExample(text="The sky is blue.", meta={"id": 0}),
            LMExample(text="Grass is green.", meta={"id": 1}),
        ],
    ),
    "lm_conversational": (
        [{"messages": [Q1, msg("assistant", "Blue.")]}, {"messages": [Q2, msg("assistant", "Seven.")]}],
        load_sft,
        "language_modeling",
        [
            LMExample(messages=conv(Q1, msg("assistant", "Blue."))),
            LMExample(messages=conv(Q2, msg("assistant", "Seven."))),
        ],
    ),
    "prompt_completion_standard": (
        [{"prompt": "2 + 2 =", "completion": " 4"}, {"prompt": "3 + 3 =", "completion": " 6"}],
        load_sft,
        "prompt_completion",
        [PromptCompletion("2 + 2 =", " 4"), PromptCompletion("3 + 3 =", " 6")],
    ),
    "prompt_completion_conversational": (
        [
            {"prompt": [msg("system", "Be brief."), Q1], "completion": [msg("assistant", "Blue.")]},
            {"prompt": [Q2], "completion": [msg("assistant", "Seven.")]},
        ],
        load_sft,
        "prompt_completion",
        [
            PromptCompletion(conv(msg("system", "Be brief."), Q1), conv(msg("assistant", "Blue."))),
            PromptCompletion(conv(Q2), conv(msg("assistant", "Seven."))),
        ],
    ),
    "prompt_only_standard": (
        [{"prompt": "Name a colour."}, {"prompt": "Name a number."}],
        load_prompts,
        "prompt_only",
        [PromptOnly("Name a colour."), PromptOnly("Name a number.")],
    ),
    "prompt_only_conversational": (
        [{"prompt": [Q1]}, {"prompt": [Q2]}],
        load_prompts,
        "prompt_only",
        [PromptOnly(conv(Q1)), PromptOnly(conv(Q2))],
    ),
    "preference_standard": (
        [
            {"prompt": "Name a colour.", "chosen": " Blue.", "rejected": " Seven.", "margin": 1.5},
            {"prompt": "Name a number.", "chosen": " Seven.", "rejected": " Blue.", "margin": 0.5},
        ],
        load_preferences,
        "preference",
        [
            Preference("Name a colour.", " Blue.", " Seven.", margin=1.5),
            Preference("Name a number.", " Seven.", " Blue.", margin=0.5),
        ],
    ),
    "preference_conversational": (
        [
            {"prompt": [Q1], "chosen": [msg("assistant", "Blue.")], "rejected": [msg("assistant", "Seven.")]},
            {"prompt": [Q2], "chosen": [msg("assistant", "Seven.")], "rejected": [msg("assistant", "Blue.")]},
        ],
        load_preferences,
        "preference",
        [
            Preference(conv(Q1), conv(msg("assistant", "Blue.")), conv(msg("assistant", "Seven."))),
            Preference(conv(Q2), conv(msg("assistant", "Seven.")), conv(msg("assistant", "Blue."))),
        ],
    ),
    "implicit_preference_conversational": (
        [
            {"chosen": [Q1, msg("assistant", "Blue.")], "rejected": [Q1, msg("assistant", "Seven.")]},
            {"chosen": [Q2, msg("assistant", "Seven.")], "rejected": [Q2, msg("assistant", "Blue.")]},
        ],
        load_preferences,
        "implicit_preference",
        [
            Preference(conv(Q1), conv(msg("assistant", "Blue.")), conv(msg("assistant", "Seven."))),
            Preference(conv(Q2), conv(msg("assistant", "Seven.")), conv(msg("assistant", "Blue."))),
        ],
    ),
    "implicit_preference_hh": (
        [
            {
                "chosen": hh(("Human", "Name a colour."), ("Assistant", "Blue.")),
                "rejected": hh(("Human", "Name a colour."), ("Assistant", "Seven.")),
            },
            {
                "chosen": hh(("Human", "Name a number."), ("Assistant", "Seven.")),
                "rejected": hh(("Human", "Name a number."), ("Assistant", "Blue.")),
            },
        ],
        load_preferences,
        "implicit_preference",
        [
            Preference(conv(Q1), conv(msg("assistant", "Blue.")), conv(msg("assistant", "Seven."))),
            Preference(conv(Q2), conv(msg("assistant", "Seven.")), conv(msg("assistant", "Blue."))),
        ],
    ),
}


def write_source(tmp_path: Path, kind: str, rows: list[dict]) -> tuple[str, list[str]]:
    """Write ``rows`` as a source of ``kind``; return its path and the expected location of each row."""
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    if kind == "jsonl":
        path = tmp_path / "data.jsonl"
        path.write_text(lines, encoding="utf-8")
    elif kind == "jsonl.gz":
        path = tmp_path / "data.jsonl.gz"
        path.write_bytes(gzip.compress(lines.encode()))
    elif kind == "json_lines":
        path = tmp_path / "data.json"
        path.write_text(lines, encoding="utf-8")
    elif kind == "json_array":  # one item per line, after the opening "[" line
        path = tmp_path / "data.json"
        path.write_text("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n", encoding="utf-8")
        return str(path), [f"{path}:{i + 2}" for i in range(len(rows))]
    elif kind == "parquet":
        path = tmp_path / "data.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return str(path), [f"{path}:row {i}" for i in range(len(rows))]
    elif kind == "save_to_disk":
        import datasets

        path = tmp_path / "saved"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
        return str(path), [f"{path}[train]:row {i}" for i in range(len(rows))]
    else:
        raise ValueError(kind)
    return str(path), [f"{path}:{i + 1}" for i in range(len(rows))]


SOURCE_KINDS = ["jsonl", "jsonl.gz", "json_lines", "json_array", "parquet", "save_to_disk"]


@pytest.mark.parametrize("kind", SOURCE_KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_every_format_from_every_source(tmp_path: Path, case: str, kind: str) -> None:
    rows, loader, fmt, expected = CASES[case]
    source, locations = write_source(tmp_path, kind, rows)

    assert [location for location, _ in read_rows(source)] == locations
    assert detect_format(rows[0]) == fmt
    records, report = loader(source)
    assert records == expected
    assert [record.source for record in records] == locations
    assert (report.format, report.n_rows, report.n_loaded, report.skipped) == (fmt, 2, 2, {})
    assert report.summary() == f"loaded 2 of 2 rows ({fmt})"


@pytest.mark.parametrize("case", list(CASES))
def test_to_row_round_trip(case: str) -> None:
    for record in CASES[case][3]:
        row = to_row(record)
        assert json.loads(json.dumps(row)) == row  # plain JSON
        assert parse_row(row) == record


def test_in_memory_rows_are_located_by_index() -> None:
    records, report = load_prompts([{"prompt": "a"}, {"prompt": "b"}])
    assert [r.source for r in records] == ["row 0", "row 1"]
    with pytest.raises(DataError, match=r"^row 1: field 'prompt': empty"):
        load_prompts([{"prompt": "a"}, {"prompt": " "}])
    with pytest.raises(DataError, match=r"^row 0: expected a JSON object, got str"):
        load_prompts(["a prompt"])


# --- equal records from equivalent forms --------------------------------------------------------------------

TWO_TURNS = [msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "Name a colour.")]
EQUIVALENT_PAIRS = {
    "explicit_conversational": {
        "prompt": TWO_TURNS,
        "chosen": [msg("assistant", "Blue.")],
        "rejected": [msg("assistant", "Seven.")],
    },
    "implicit_conversational": {
        "chosen": [*TWO_TURNS, msg("assistant", "Blue.")],
        "rejected": [*TWO_TURNS, msg("assistant", "Seven.")],
    },
    "implicit_hh": {  # extra spaces around contents are stripped
        "chosen": hh(
            ("Human", " Hi"), ("Assistant", "Hello!  "), ("Human", "Name a colour."), ("Assistant", "Blue.")
        ),
        "rejected": hh(
            ("Human", "Hi"), ("Assistant", "Hello!"), ("Human", "Name a colour. "), ("Assistant", "Seven.")
        ),
    },
}


def test_explicit_implicit_and_hh_forms_give_equal_records() -> None:
    records = {name: parse_row(row) for name, row in EQUIVALENT_PAIRS.items()}
    expected = Preference(conv(*TWO_TURNS), conv(msg("assistant", "Blue.")), conv(msg("assistant", "Seven.")))
    assert all(record == expected for record in records.values()), records
    assert len(set(records.values())) == 1  # records are hashable, and equal records hash alike
    assert detect_format(EQUIVALENT_PAIRS["explicit_conversational"]) == "preference"
    assert detect_format(EQUIVALENT_PAIRS["implicit_hh"]) == "implicit_preference"


def test_hh_transcript_without_leading_blank_lines() -> None:
    record = parse_row(
        {"chosen": "Human: Hi\n\nAssistant: Hello!", "rejected": "Human: Hi\n\nAssistant: Go."}
    )
    assert record.prompt == (msg("user", "Hi"),)
    assert record.chosen == (msg("assistant", "Hello!"),)


def test_loaders_convert_between_formats() -> None:
    pair = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven.", "id": 7}
    (example,), _ = load_sft([pair])
    assert example == PromptCompletion("Name a colour.", "Blue.", meta={"id": 7})
    (prompt,), report = load_prompts([pair])
    assert prompt == PromptOnly("Name a colour.", meta={"id": 7})
    assert report.format == "preference"
    (prompt,), _ = load_prompts([{"prompt": [Q1], "completion": [msg("assistant", "Blue.")]}])
    assert prompt == PromptOnly(conv(Q1))
    (prompt,), _ = load_prompts(CASES["implicit_preference_hh"][0][:1])
    assert prompt == PromptOnly(conv(Q1))


def test_null_values_count_as_absent() -> None:
    row = {"prompt": "p", "completion": None, "margin": None}
    assert detect_format(row) == "prompt_only"
    (pair,), _ = load_preferences([{"prompt": "p", "chosen": "a", "rejected": "b", "margin": None}])
    assert pair.margin is None and pair.meta == {}


def test_message_is_a_read_only_hashable_dict() -> None:
    message = Message("user", "Hi")
    assert message == {"role": "user", "content": "Hi"}
    assert json.loads(json.dumps(message)) == {"role": "user", "content": "Hi"}
    assert hash(message) == hash(Message("user", "Hi"))
    assert pickle.loads(pickle.dumps(message)) == message and copy.deepcopy(message) == message
    with pytest.raises(TypeError):
        message["content"] = "changed"
    with pytest.raises(TypeError):
        message.update(content="changed")


# --- the real HH-RLHF sample --------------------------------------------------------------------------------


def test_real_hh_rlhf_sample() -> None:
    if not HH_SAMPLE.exists():
        pytest.skip(f"../shared/data not present: {HH_SAMPLE} is missing")
    records, report = load_preferences(HH_SAMPLE, on_error="skip")
    assert report.format == "implicit_preference"
    assert report.n_rows == 1800
    assert report.n_loaded == len(records) and report.n_loaded + report.n_skipped == report.n_rows
    assert len(records) > 1700, report.summary()
    for record in records:
        assert isinstance(record.prompt, tuple) and record.prompt[-1]["role"] == "user"
        for response in (record.chosen, record.rejected):
            assert len(response) == 1 and response[0]["role"] == "assistant"
        assert record.chosen != record.rejected
    for reason, examples in report.examples.items():
        assert 1 <= len(examples) <= min(5, report.skipped[reason])
        assert all(example.startswith(f"{HH_SAMPLE}:") for example in examples)
    if report.skipped:  # the default policy raises on the first bad row, located
        with pytest.raises(DataError, match=rf"^{re.escape(str(HH_SAMPLE))}:\d+: "):
            load_preferences(HH_SAMPLE)


# --- malformed rows: raised with their location, or skipped and counted -------------------------------------

PREF = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}
HH = {
    "chosen": hh(("Human", "Hi"), ("Assistant", "Hello!")),
    "rejected": hh(("Human", "Hi"), ("Assistant", "Go.")),
}
IMPLICIT = {"chosen": [Q1, msg("assistant", "Blue.")], "rejected": [Q1, msg("assistant", "Seven.")]}
PC = {"prompt": [Q1], "completion": [msg("assistant", "Blue.")]}
LM = {"text": "The sky is blue."}


def bad(good: dict, row: dict | bytes, *fragments: str, id: str):
    """A malformed row (or raw line) to place between two copies of ``good``, and what its error must say."""
    line = row if isinstance(row, bytes) else json.dumps(row).encode()
    loader = load_sft if "completion" in good or "text" in good else load_preferences
    return pytest.param(good, line, loader, fragments, id=id)


MALFORMED = [
    bad(PREF, b'{"prompt": "Name a colour.", "chosen": ', "bad JSON", id="bad_json"),
    bad(PREF, b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', "not valid UTF-8", id="not_utf8"),
    bad(PREF, b'["a", "b"]', "expected a JSON object, got list", id="not_an_object"),
    bad(
        PREF,
        {"question": "q", "answer": "a"},
        "unrecognised row format",
        "'question'",
        "preference",
        id="no_format",
    ),
    bad(PREF, {"prompt": "p", "chosen": "c"}, "field 'rejected'", "missing", id="missing_field"),
    bad(PREF, {"prompt": "p", "chosen": 3, "rejected": "r"}, "field 'chosen'", "got int", id="wrong_type"),
    bad(
        PREF, {"prompt": "p", "chosen": "  \n", "rejected": "r"}, "field 'chosen'", "empty", id="blank_chosen"
    ),
    bad(PREF, {"prompt": "", "chosen": "c", "rejected": "r"}, "field 'prompt'", "empty", id="empty_prompt"),
    bad(
        PREF,
        {"prompt": "p", "chosen": [msg("assistant", "a")], "rejected": [msg("assistant", "b")]},
        "field 'chosen'",
        "like 'prompt'",
        id="mixed_standard_and_conversational",
    ),
    bad(PREF, {**PREF, "rejected": "Blue."}, "chosen is identical to rejected", id="identical"),
    bad(PREF, {**PREF, "margin": float("nan")}, "field 'margin'", "finite number", id="margin_nan"),
    bad(PREF, {**PREF, "margin": float("inf")}, "field 'margin'", "finite number", id="margin_inf"),
    bad(PREF, {**PREF, "margin": "high"}, "field 'margin'", "finite number", id="margin_string"),
    bad(PREF, {"text": "Hello."}, "mixed formats", "language_modeling", "preference", id="mixed_formats"),
    bad(
        PC,
        {"prompt": ["Hi"], "completion": PC["completion"]},
        "field 'prompt'",
        "message 1",
        id="message_not_dict",
    ),
    bad(
        PC,
        {**PC, "prompt": [{"content": "Hi"}]},
        "field 'prompt'",
        "missing 'role'",
        id="message_without_role",
    ),
    bad(
        PC,
        {**PC, "prompt": [msg("robot", "Hi")]},
        "field 'prompt'",
        "unknown role 'robot'",
        id="unknown_role",
    ),
    bad(
        PC,
        {**PC, "prompt": [{"role": "user", "content": 5}]},
        "'content' must be a string",
        id="content_not_str",
    ),
    bad(PC, {**PC, "prompt": [msg("user", " ")]}, "field 'prompt'", "empty", id="blank_message_content"),
    bad(PC, {**PC, "prompt": []}, "field 'prompt'", "empty list of messages", id="empty_conversation"),
    bad(
        PC,
        {**PC, "completion": [msg("user", "Blue.")]},
        "field 'completion'",
        "assistant",
        id="completion_from_user",
    ),
    bad(LM, {"text": "a", "messages": [Q1]}, "both 'text' and 'messages'", id="text_and_messages"),
    bad(LM, {"text": "\t"}, "field 'text'", "empty", id="blank_text"),
    bad(
        HH,
        {**HH, "chosen": hh(("Assistant", "Hi"))},
        "field 'chosen'",
        "start with a Human turn",
        id="hh_no_human",
    ),
    bad(
        HH, {**HH, "chosen": hh(("Human", "Hi"))}, "field 'chosen'", "no Assistant turn", id="hh_no_assistant"
    ),
    bad(
        HH,
        {**HH, "rejected": hh(("Human", "Hi"), ("Assistant", "Yes?"), ("Human", "Bye"))},
        "field 'rejected'",
        "does not end with an Assistant turn",
        id="hh_ends_with_human",
    ),
    bad(
        HH,
        {**HH, "chosen": "\n\nHuman: Hi\n\nAssistant:  "},
        "field 'chosen'",
        "empty final",
        id="hh_empty_final",
    ),
    bad(
        HH,
        {
            "chosen": hh(("Human", "Hi"), ("Assistant", "Hello!"), ("Human", "Bye"), ("Assistant", "Bye!")),
            "rejected": hh(
                ("Human", "Hi"), ("Assistant", "Go away."), ("Human", "Bye"), ("Assistant", "Ok.")
            ),
        },
        "differ before the final assistant turn",
        "message 2",
        id="hh_prompts_differ",
    ),
    bad(
        IMPLICIT,
        {"chosen": [msg("assistant", "Blue.")], "rejected": [msg("assistant", "Seven.")]},
        "no shared prompt",
        id="implicit_no_shared_prompt",
    ),
    bad(
        IMPLICIT,
        {"chosen": [Q1, msg("assistant", "Blue."), Q2], "rejected": IMPLICIT["rejected"]},
        "field 'chosen'",
        "not the assistant",
        id="implicit_ends_with_user",
    ),
]


def write_lines(tmp_path: Path, good: dict, bad_line: bytes) -> Path:
    """A good row, the bad line (line 2), another good row."""
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join([json.dumps(good).encode(), bad_line, json.dumps(good).encode()]) + b"\n")
    return path


@pytest.mark.parametrize(("good", "bad_line", "loader", "fragments"), MALFORMED)
def test_malformed_row_raises_with_location(tmp_path: Path, good, bad_line, loader, fragments) -> None:
    path = write_lines(tmp_path, good, bad_line)
    with pytest.raises(DataError) as caught:
        loader(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: "), message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(("good", "bad_line", "loader", "fragments"), MALFORMED)
def test_malformed_row_is_skipped_and_counted(tmp_path: Path, good, bad_line, loader, fragments) -> None:
    path = write_lines(tmp_path, good, bad_line)
    records, report = loader(path, on_error="skip")
    assert [record.source for record in records] == [f"{path}:1", f"{path}:3"]
    assert (report.n_rows, report.n_loaded, report.n_skipped) == (3, 2, 1)
    ((reason, examples),) = report.examples.items()
    assert report.skipped == {reason: 1} and examples[0].startswith(f"{path}:2: ")
    assert report.summary() == f"loaded 2 of 3 rows ({report.format}); skipped 1: {reason} (1)"


def test_report_counts_every_skip_and_keeps_five_examples() -> None:
    rows = [PREF] + [{**PREF, "rejected": PREF["chosen"]}] * 7 + [{**PREF, "chosen": 1}]
    records, report = load_preferences(rows, on_error="skip")
    assert len(records) == 1 and isinstance(report, LoadReport)
    assert report.skipped == {"chosen identical to rejected": 7, "wrong type for 'chosen'": 1}
    assert len(report.examples["chosen identical to rejected"]) == 5
    assert report.summary() == (
        "loaded 1 of 9 rows (preference); "
        "skipped 8: chosen identical to rejected (7), wrong type for 'chosen' (1)"
    )


def test_limit_stops_after_that_many_records() -> None:
    rows = [PREF, {**PREF, "chosen": 1}, PREF, PREF, PREF]
    records, report = load_preferences(rows, on_error="skip", limit=2)
    assert len(records) == 2 and (report.n_rows, report.n_skipped) == (3, 1)
    with pytest.raises(ValueError, match="limit"):
        load_preferences(rows, limit=0)
    with pytest.raises(ValueError, match="on_error"):
        load_preferences(rows, on_error="ignore")


# --- problems with the source as a whole always raise -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.jsonl", b""), ("blank.jsonl", b"\n  \n"), ("empty.json", b""), ("array.json", b" [ ]\n")],
)
def test_empty_file(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: no rows"):
        load_sft(path, on_error="skip")


def test_empty_in_memory_rows() -> None:
    with pytest.raises(DataError, match=r"^rows: no rows"):
        load_sft([])


def test_corrupt_and_truncated_gzip(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(b"this is not gzip data\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(corrupt))}:1: corrupt or truncated gzip stream"):
        load_preferences(corrupt, on_error="skip")
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress((json.dumps(PREF) + "\n").encode() * 2000)[:-40])
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(truncated))}:\d+: corrupt or truncated gzip stream"
    ):
        load_preferences(truncated, on_error="skip")


def test_json_array_errors_are_located_by_line(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[\n  {"text": "a"},\n  42,\n  {"text": "b"}\n]\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: expected a JSON object, got int"):
        load_sft(path)
    records, report = load_sft(path, on_error="skip")
    assert [r.source for r in records] == [f"{path}:2", f"{path}:4"] and report.skipped == {
        "not a JSON object": 1
    }
    for text, line in [
        ('[\n{"text": "a"},\n{"text": }\n]', 3),
        ('[\n{"text": "a"},\n]', 3),
        ('[{"text": "a"}] x', 1),
    ]:
        path.write_text(text)
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:{line}: bad JSON"):
            load_sft(path, on_error="skip")
    path.write_bytes(b'[\n{"text": "a"},\n{"text": "\xff"}\n]')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: not valid UTF-8"):
        load_sft(path)


def test_unreadable_sources(tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    csv.write_text("prompt\nhi\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_prompts(csv)
    for missing in [
        tmp_path / "missing.jsonl",
        "missing.jsonl",
        "./data/missing",
    ]:  # not looked up on the hub
        with pytest.raises(DataError, match="path does not exist locally"):
            load_prompts(missing)
    parquet = tmp_path / "bad.parquet"
    parquet.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=rf"^{re.escape(str(parquet))}:row 0: not a readable Parquet file"):
        load_prompts(parquet)
    with pytest.raises(DataError, match="not a dataset directory written by save_to_disk"):
        load_prompts(tmp_path)


def test_saved_dataset_splits(tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_list([{"prompt": "a"}])}).save_to_disk(
        tmp_path / "dd"
    )
    (prompt,), _ = load_prompts(tmp_path / "dd", split="test")
    assert prompt.source == f"{tmp_path / 'dd'}[test]:row 0"
    with pytest.raises(DataError, match=r"no split 'train'; available splits: \['test'\]"):
        load_prompts(tmp_path / "dd")
    datasets.Dataset.from_list([{"prompt": "a"}]).save_to_disk(tmp_path / "ds")
    (prompt,), _ = load_prompts(tmp_path / "ds")
    assert prompt.source == f"{tmp_path / 'ds'}:row 0"


def test_hub_dataset_names(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(name: str, split: str) -> None:
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as caught:
        load_prompts("someone/prompts")
    message = str(caught.value)
    assert message.startswith("someone/prompts: path does not exist locally")
    assert "hub could not be reached" in message and "Couldn't reach the hub" in message

    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, split: datasets.Dataset.from_list([{"prompt": "a"}])
    )
    (prompt,), _ = load_prompts("someone/prompts", split="test")
    assert prompt == PromptOnly("a") and prompt.source == "someone/prompts[test]:row 0"


def test_loader_rejects_data_of_another_format() -> None:
    with pytest.raises(DataError, match=r"^row 0: load_preferences reads .* data, not prompt_only"):
        load_preferences([{"prompt": "a"}], on_error="skip")
    with pytest.raises(DataError, match=r"^row 0: load_prompts reads .* data, not language_modeling"):
        load_prompts([LM])


def test_all_rows_skipped_raises() -> None:
    with pytest.raises(DataError, match=r"^rows: no usable rows: loaded 0 of 2 rows"):
        load_preferences([{**PREF, "chosen": 1}, {**PREF, "prompt": " "}], on_error="skip")


def test_unrecognised_format_lists_the_formats() -> None:
    with pytest.raises(DataError) as caught:
        detect_format({"question": "q", "answer": None}, "x.jsonl:4")
    message = str(caught.value)
    assert message.startswith(
        "x.jsonl:4: unrecognised row format: found keys ['question'] (null: ['answer'])"
    )
    for fmt in ["language_modeling", "prompt_completion", "prompt_only", "preference", "implicit_preference"]:
        assert fmt in message


# --- writing ------------------------------------------------------------------------------------------------


def test_write_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "pairs.jsonl"
    records = CASES["preference_conversational"][3]
    assert write_jsonl(records, path) == 2
    assert load_preferences(path)[0] == records
    rows = [{"text": "héllo"}, {"text": "wörld", "id": 3}]
    assert write_jsonl(rows, path) == 2
    assert [row for _, row in read_rows(path)] == rows
    assert path.read_text(encoding="utf-8").splitlines()[0] == '{"text": "héllo"}'


def test_write_jsonl_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    write_jsonl([{"text": "old"}], path)
    before = path.read_bytes()

    def crash():
        yield {"text": "new"}
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError, match="crash while writing"):
        write_jsonl(crash(), path)
    with pytest.raises(ValueError):  # NaN is not JSON
        write_jsonl([{"text": "new"}, {"margin": float("nan")}], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]  # no temporary file left behind


def test_to_row_writes_plain_trl_rows() -> None:
    record = parse_row({**EQUIVALENT_PAIRS["implicit_conversational"], "id": 5, "margin": 1})
    row = to_row(record)
    assert row == {**EQUIVALENT_PAIRS["explicit_conversational"], "margin": 1.0, "id": 5}
    assert all(type(m) is dict for m in row["prompt"] + row["chosen"] + row["rejected"])
    assert to_row(LMExample(messages=conv(Q1))) == {"messages": [Q1]}


# --- every shape of TRL's dataset formats: read as TRL reads it, or refused by name -------------------------
#
# One row of each shape that TRL documents (docs/source/dataset_formats.md) or uses in its data-utils tests
# (tests/test_data_utils.py): our own text, TRL's structure. Each expectation is what TRL's conversion gives
# for the row, written out by hand, so these tests need no TRL: the comment of each names the TRL function
# (or documented conversion) it mirrors. A refusal must name the shape and say what is read instead.

SYS, DEV = msg("system", "Answer in one word."), msg("developer", "Keep it short.")
LAKE = msg("user", "Which lake is deepest?")


def think(content: str, thought: str, key: str = "thinking") -> dict[str, str]:
    return {"role": "assistant", key: thought, "content": content}


SHAPES = {
    # (row, {loader name: expected record | ("refused", fragments...)})
    # Language modelling: SFTTrainer renders `messages` whole (apply_chat_template's "text").
    "lm_standard": ({"text": "Ice floats."}, {"sft": LMExample(text="Ice floats.")}),
    "lm_conversational_system_developer": (
        {"messages": [SYS, DEV, LAKE, msg("assistant", "Baikal.")]},
        {"sft": LMExample(messages=conv(SYS, DEV, LAKE, msg("assistant", "Baikal.")))},
    ),
    "lm_harmony_thinking": (  # TRL's "language modeling with harmony": `thinking` on the assistant message
        {"messages": [SYS, LAKE, think("Baikal.", "Baikal is 1,642 m deep.")]},
        {
            "sft": LMExample(
                messages=(
                    Message(**SYS),
                    Message(**LAKE),
                    Message(**think("Baikal.", "Baikal is 1,642 m deep.")),
                )
            )
        },
    ),
    "lm_sharegpt": (  # maybe_convert_to_chatml: from/value -> role/content, conversations -> messages
        {"conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello."}]},
        {"sft": LMExample(messages=conv(msg("user", "Hi"), msg("assistant", "Hello.")))},
    ),
    # Prompt-only: the generation prompt follows a user message (apply_chat_template).
    "prompt_only_standard": ({"prompt": "Ice is"}, {"prompts": PromptOnly("Ice is")}),
    "prompt_only_multi_turn": (
        {"prompt": [SYS, msg("user", "Hi"), msg("assistant", "Hello."), LAKE]},
        {"prompts": PromptOnly(conv(SYS, msg("user", "Hi"), msg("assistant", "Hello."), LAKE))},
    ),
    "prompt_ends_with_system": (  # apply_chat_template raises "Invalid role in the last message: system"
        {"prompt": [LAKE, SYS]},
        {"prompts": ("refused", "field 'prompt'", "ends with a system message")},
    ),
    "prompt_ends_with_developer": (
        {"prompt": [DEV]},
        {"prompts": ("refused", "field 'prompt'", "ends with a developer message")},
    ),
    "prompt_only_prefill": (  # rollouts start a new assistant turn, so a prefill is refused there
        {"prompt": [LAKE, msg("assistant", "Lake")]},
        {"prompts": ("refused", "prefill", "load_prompts reads prompts that end with a user message")},
    ),
    # Prompt-completion.
    "prompt_completion_standard": (
        {"prompt": "Ice is", "completion": " cold."},
        {"sft": PromptCompletion("Ice is", " cold."), "prompts": PromptOnly("Ice is")},
    ),
    "prompt_completion_reasoning_content": (  # Qwen-style `reasoning_content` on the completion
        {"prompt": [LAKE], "completion": [think("Baikal.", "The deepest is Baikal.", "reasoning_content")]},
        {
            "sft": PromptCompletion(
                conv(LAKE), (Message("assistant", "Baikal.", reasoning_content="The deepest is Baikal."),)
            )
        },
    ),
    "prompt_completion_prefill": (  # the prompt's last assistant message is continued (continue_final_message)
        {"prompt": [LAKE, msg("assistant", "Lake")], "completion": [msg("assistant", " Baikal.")]},
        {"sft": PromptCompletion(conv(LAKE, msg("assistant", "Lake")), conv(msg("assistant", " Baikal.")))},
    ),
    "prefill_continuation_with_reasoning": (
        {"prompt": [LAKE, msg("assistant", "Lake")], "completion": [think(" Baikal.", "Deepest.")]},
        {"sft": ("refused", "field 'completion'", "continues the prompt's final assistant message")},
    ),
    # Preference, explicit prompt.
    "preference_standard": (
        {"prompt": "Rivers run", "chosen": " downhill.", "rejected": " uphill."},
        {
            "preferences": Preference("Rivers run", " downhill.", " uphill."),
            "sft": PromptCompletion("Rivers run", " downhill."),  # documented: drop rejected
            "prompts": PromptOnly("Rivers run"),  # documented: drop chosen and rejected
        },
    ),
    "preference_harmony": (
        {
            "prompt": [SYS, LAKE],
            "chosen": [think("Baikal.", "Deepest.")],
            "rejected": [think("Tahoe.", "Guess.")],
        },
        {
            "preferences": Preference(
                conv(SYS, LAKE),
                (Message("assistant", "Baikal.", thinking="Deepest."),),
                (Message("assistant", "Tahoe.", thinking="Guess."),),
            )
        },
    ),
    "string_prompt_beside_conversations": (  # maybe_extract_prompt would ignore the string prompt
        {
            "prompt": "Which lake?",
            "chosen": [LAKE, msg("assistant", "Baikal.")],
            "rejected": [LAKE, msg("assistant", "Tahoe.")],
        },
        {"preferences": ("refused", "field 'chosen'", "drop the 'prompt' column")},
    ),
    # Preference, implicit prompt: extract_prompt.
    "implicit_standard": (  # the longest common prefix, less its final space: "Rivers run"
        {"chosen": "Rivers run downhill.", "rejected": "Rivers run uphill."},
        {
            "preferences": Preference("Rivers run", " downhill.", " uphill."),
            "sft": PromptCompletion("Rivers run", " downhill."),
            "prompts": PromptOnly("Rivers run"),
        },
    ),
    "implicit_standard_no_space": (  # the prefix ends inside a word: "The sky is gre" / "en." / "y."
        {"chosen": "The sky is green.", "rejected": "The sky is grey."},
        {"preferences": Preference("The sky is gre", "en.", "y.")},
    ),
    "implicit_standard_one_starts_the_other": (  # extract_prompt would cut inside the shared text
        {"chosen": "Yes.", "rejected": "Yes. Sure."},
        {"preferences": ("refused", "chosen is the start of the other", "add a 'prompt' field")},
    ),
    "implicit_conversational_multi_turn": (  # the shared leading messages are the prompt
        {
            "chosen": [SYS, msg("user", "Hi"), msg("assistant", "Hello."), LAKE, msg("assistant", "Baikal.")],
            "rejected": [
                SYS,
                msg("user", "Hi"),
                msg("assistant", "Hello."),
                LAKE,
                msg("assistant", "Tahoe."),
            ],
        },
        {
            "preferences": Preference(
                conv(SYS, msg("user", "Hi"), msg("assistant", "Hello."), LAKE),
                conv(msg("assistant", "Baikal.")),
                conv(msg("assistant", "Tahoe.")),
            )
        },
    ),
    "implicit_harmony": (  # messages compare with their thinking: the responses differ in both
        {
            "chosen": [SYS, LAKE, think("Baikal.", "Deepest.")],
            "rejected": [SYS, LAKE, think("Tahoe.", "Guess.")],
        },
        {
            "preferences": Preference(
                conv(SYS, LAKE),
                (Message("assistant", "Baikal.", thinking="Deepest."),),
                (Message("assistant", "Tahoe.", thinking="Guess."),),
            )
        },
    ),
    "implicit_two_assistant_messages": (  # extract_prompt splits at the first differing message
        {
            "chosen": [LAKE, msg("assistant", "Baikal."), msg("assistant", "In Siberia.")],
            "rejected": [LAKE, msg("assistant", "Tahoe."), msg("assistant", "In Nevada.")],
        },
        {
            "preferences": Preference(
                conv(LAKE),
                conv(msg("assistant", "Baikal."), msg("assistant", "In Siberia.")),
                conv(msg("assistant", "Tahoe."), msg("assistant", "In Nevada.")),
            )
        },
    ),
    "implicit_shared_assistant_message": (  # the split prompt would end with an assistant message
        {
            "chosen": [LAKE, msg("assistant", "Baikal."), msg("assistant", "Yes.")],
            "rejected": [LAKE, msg("assistant", "Baikal."), msg("assistant", "No.")],
        },
        {"preferences": ("refused", "share assistant message 2", "add a 'prompt' field")},
    ),
    # Unpaired preference: SFT keeps the label-true rows ("from unpaired preference to prompt-completion"),
    # prompts keep every row ("... to prompt-only"); pairs cannot be made of one row: KTO/BCO read it.
    "unpaired_standard_true": (
        {"prompt": "Ice is", "completion": " cold.", "label": True},
        {
            "sft": PromptCompletion("Ice is", " cold."),
            "prompts": PromptOnly("Ice is"),
            "preferences": (
                "refused",
                "not unpaired_preference",
                "KTO and BCO",
                "{prompt, chosen, rejected}",
            ),
        },
    ),
    "unpaired_conversational_false": (
        {"prompt": [LAKE], "completion": [msg("assistant", "Tahoe.")], "label": False},
        {"sft": ("left out", "label false"), "prompts": PromptOnly(conv(LAKE))},
    ),
    "unpaired_bad_label": (
        {"prompt": "Ice is", "completion": " cold.", "label": "yes"},
        {"sft": ("refused", "field 'label'", "expected true or false")},
    ),
    # Stepwise supervision: SFT keeps rows whose steps are all true, joined ("... to prompt-completion").
    "stepwise_all_true": (
        {"prompt": "Is 9.8 > 9.11?", "completions": [" 0.8 > 0.11,", " so yes."], "labels": [True, True]},
        {
            "sft": PromptCompletion("Is 9.8 > 9.11?", " 0.8 > 0.11, so yes."),
            "prompts": PromptOnly("Is 9.8 > 9.11?"),
            "preferences": (
                "refused",
                "not stepwise_supervision",
                "PRM trainer",
                "{prompt, chosen, rejected}",
            ),
        },
    ),
    "stepwise_one_false": (
        {"prompt": "Is 9.8 > 9.11?", "completions": [" 0.11 > 0.8,", " so no."], "labels": [False, False]},
        {"sft": ("left out", "a step labelled false")},
    ),
    "stepwise_labels_mismatch": (
        {"prompt": "Is 9.8 > 9.11?", "completions": [" yes."], "labels": [True, False]},
        {"sft": ("refused", "field 'labels'", "one true or false per step (1), got 2")},
    ),
    # Tool use (TRL's "preference with tool calls", "tool calling" docs): refused by name.
    "tool_calls": (
        {
            "prompt": [LAKE],
            "chosen": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "depth", "arguments": {"lake": "Baikal"}}}
                    ],
                },
                {"role": "tool", "name": "depth", "content": "1642"},
                msg("assistant", "Baikal."),
            ],
            "rejected": [msg("assistant", "Tahoe.")],
        },
        {
            "preferences": (
                "refused",
                "field 'chosen'",
                "message 1",
                "'tool_calls'",
                "tool use is not supported",
            )
        },
    ),
    "tool_message": (
        {
            "messages": [
                LAKE,
                {"role": "tool", "name": "depth", "content": "1642"},
                msg("assistant", "Baikal."),
            ]
        },
        {"sft": ("refused", "field 'messages'", "message 2", "role 'tool'", "tool use is not supported")},
    ),
    "tools_column": (
        {
            "messages": [LAKE, msg("assistant", "Baikal.")],
            "tools": [{"type": "function", "function": {"name": "depth"}}],
        },
        {"sft": ("refused", "field 'tools'", "tool use is not supported")},
    ),
    # chat_template_kwargs: kept with the row, passed to the chat template (tested in test_sft.py).
    "chat_template_kwargs": (
        {
            "prompt": [LAKE],
            "completion": [msg("assistant", "Baikal.")],
            "chat_template_kwargs": {"enable_thinking": False},
        },
        {
            "sft": PromptCompletion(
                conv(LAKE),
                conv(msg("assistant", "Baikal.")),
                meta={"chat_template_kwargs": {"enable_thinking": False}},
            )
        },
    ),
    "chat_template_kwargs_standard": (
        {"prompt": "Ice is", "completion": " cold.", "chat_template_kwargs": {"enable_thinking": False}},
        {"sft": ("refused", "field 'chat_template_kwargs'", "not rendered with a chat template")},
    ),
    # Extra columns are kept in meta; extra message keys are refused, never dropped.
    "extra_columns": (
        {"prompt": "Ice is", "completion": " cold.", "id": 3, "source": "notes"},
        {"sft": PromptCompletion("Ice is", " cold.", meta={"id": 3, "source": "notes"})},
    ),
    "extra_message_key": (
        {"messages": [{"role": "user", "content": "Hi", "name": "Ann"}, msg("assistant", "Hello.")]},
        {"sft": ("refused", "field 'messages'", "message 1", "key 'name' is not read")},
    ),
    "thinking_on_user_message": (
        {"messages": [{"role": "user", "content": "Hi", "thinking": "Hmm."}, msg("assistant", "Hello.")]},
        {"sft": ("refused", "message 1", "'thinking' on a user message")},
    ),
    "structured_content": (  # vision datasets: content is a list of typed parts
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                msg("assistant", "Hello."),
            ]
        },
        {"sft": ("refused", "message 1", "structured content")},
    ),
}
LOADERS = {"sft": load_sft, "prompts": load_prompts, "preferences": load_preferences}
SHAPE_CASES = [(name, loader) for name, (_, expected) in SHAPES.items() for loader in expected]


@pytest.mark.parametrize(
    ("shape", "loader"), SHAPE_CASES, ids=[f"{shape}-{loader}" for shape, loader in SHAPE_CASES]
)
def test_every_trl_shape_is_read_as_trl_reads_it_or_refused_by_name(tmp_path: Path, shape: str, loader: str):
    row, expected = SHAPES[shape][0], SHAPES[shape][1][loader]
    path = tmp_path / "shape.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    load = LOADERS[loader]
    if isinstance(expected, tuple) and expected[0] == "refused":
        with pytest.raises(DataError) as caught:
            load(path)
        message = str(caught.value)
        assert message.startswith(f"{path}:1: "), message
        for fragment in expected[1:]:
            assert fragment in message, message
    elif isinstance(expected, tuple):  # valid rows that this loader's reading of the shape leaves out
        with pytest.raises(DataError, match="no usable rows") as caught:
            load(path)
        assert f"left out 2: {expected[1]}" in str(caught.value)
    else:
        records, report = load(path)
        assert (report.n_loaded, report.n_skipped, report.n_left_out) == (2, 0, 0)
        assert type(records[0]) is type(expected)
        assert to_row(records[0]) == to_row(expected)  # field by field, messages as plain dicts
        assert records[0] == expected


def test_every_shape_is_listed_by_data_inspect_as_its_own_format(tmp_path: Path) -> None:
    """``load_any`` reads each valid shape as its own record, and ``to_row`` writes it back unchanged."""
    for name, (row, expected) in SHAPES.items():
        if any(isinstance(e, tuple) and e[0] == "refused" for e in expected.values()):
            continue
        ((record,), _) = load_any([row])
        assert parse_row(to_row(record)) == record, name


def test_unpaired_and_stepwise_rows_left_out_are_counted(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Ice is", "completion": " cold.", "label": True},
        {"prompt": "Ice is", "completion": " hot.", "label": False},
        {"prompt": "Fire is", "completion": " hot.", "label": True},
        {"prompt": "Fire is", "completion": 5, "label": True},
    ]
    records, report = load_sft(rows, on_error="skip")
    assert records == [PromptCompletion("Ice is", " cold."), PromptCompletion("Fire is", " hot.")]
    assert (report.n_rows, report.n_loaded, report.n_left_out, report.n_skipped) == (4, 2, 1, 1)
    assert report.summary() == (
        "loaded 2 of 4 rows (unpaired_preference); left out 1: label false (1); "
        "skipped 1: wrong type for 'completion' (1)"
    )
    prompts, report = load_prompts(rows[:3])  # every row's prompt, as TRL's documented conversion
    assert [p.prompt for p in prompts] == ["Ice is", "Ice is", "Fire is"]


def test_message_reasoning_is_part_of_the_message() -> None:
    message = Message("assistant", "Baikal.", thinking="Deepest.")
    assert message == {"role": "assistant", "content": "Baikal.", "thinking": "Deepest."}
    assert message != Message("assistant", "Baikal.") and hash(message) != hash(
        Message("assistant", "Baikal.")
    )
    assert pickle.loads(pickle.dumps(message)) == message and copy.deepcopy(message) == message
    with pytest.raises(DataError, match="both 'thinking' and 'reasoning_content'"):
        parse_row({"messages": [LAKE, {**think("Baikal.", "a"), "reasoning_content": "b"}]})


def test_null_message_keys_count_as_absent(tmp_path: Path) -> None:
    """Parquet gives every message every key of the column: a null ``thinking`` is no reasoning."""
    rows = [
        {"messages": [LAKE, think("Baikal.", "Deepest.")]},
        {"messages": [LAKE, msg("assistant", "Tahoe.")]},
    ]
    source, _ = write_source(tmp_path, "parquet", rows)
    records, _ = load_sft(source)
    assert records[1].messages == conv(LAKE, msg("assistant", "Tahoe."))
    assert records[0].messages[1] == think("Baikal.", "Deepest.")


# --- `rlhf data inspect`: every bad row is reported alike, wherever it is ---------------------------------


@pytest.mark.parametrize(
    ("first_line", "problem"),
    [
        (b'{"prompt": "Ice is", ', "bad JSON"),
        (json.dumps({"question": "Ice is"}).encode(), "unrecognised row format"),
        (json.dumps({"prompt": "Ice is", "completion": 3}).encode(), "field 'completion'"),
    ],
    ids=["bad_json", "unknown_format", "bad_field"],
)
def test_data_inspect_reports_a_bad_first_row_like_any_other(tmp_path: Path, first_line: bytes, problem: str):
    from click.testing import CliRunner

    from rlhf.cli import main

    good = json.dumps({"prompt": "Ice is", "completion": " cold."}).encode()
    path = tmp_path / "rows.jsonl"
    for lines, bad_line in (([first_line, good, good], 1), ([good, first_line, good], 2)):
        path.write_bytes(b"\n".join(lines) + b"\n")
        result = CliRunner().invoke(main, ["data", "inspect", str(path)])
        assert result.exit_code == 1 and f"error: {path}:{bad_line}: {problem}" in result.output, (
            result.output
        )
        assert "--on-error skip" in result.output
        result = CliRunner().invoke(main, ["data", "inspect", str(path), "--on-error", "skip", "--show", "0"])
        assert result.exit_code == 0, result.output
        assert "loaded 2 of 3 rows (prompt_completion); skipped 1" in result.output
        assert f"skipped: {path}:{bad_line}: {problem}" in result.output


def test_data_inspect_reads_every_shape_as_its_own(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rlhf.cli import main

    path = tmp_path / "unpaired.jsonl"
    write_jsonl(
        [SHAPES["unpaired_standard_true"][0], {**SHAPES["unpaired_standard_true"][0], "label": False}], path
    )
    result = CliRunner().invoke(main, ["data", "inspect", str(path), "--show", "2"])
    assert result.exit_code == 0 and "loaded 2 of 2 rows (unpaired_preference)" in result.output
    assert '"label": false' in result.output  # shown as the row it is, label included
