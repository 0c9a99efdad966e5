"""Fine-tuning datasets: the paper's recipes, local files, and prompt templates.

Every recipe turns its source into records with a ``prompt`` and a ``response`` field (the
source's own fields are kept, so format-string templates can use them). A template then
renders the prompt text that the model sees; the response is what it learns to produce.

This module is imported by the config schema for its registries, so it imports nothing heavy
at module level.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qsweep.trainers import hub
from qsweep.trainers.errors import DataError

if TYPE_CHECKING:
    from qsweep.trainers.config import DataConfig

Record = dict[str, Any]

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response: "
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response: "
)

TEMPLATES = {
    "plain": "the record's prompt as it is",
    "alpaca": "the Alpaca instruction prompt (with an ### Input: block when the record has one)",
    "chat": "the tokenizer's chat template, the prompt as one user turn",
}
"""Named prompt templates; any other template is a format string over the record's fields."""


@dataclass(frozen=True)
class Recipe:
    """A named dataset: where it comes from and how its records become prompt/response."""

    name: str
    description: str
    load: Callable[[DataConfig], list[Record]]
    default_template: str = "plain"
    needs_path: bool = False
    path_hint: str = ""
    takes_path: bool = False
    """Reads ``data.path`` when given, else its hub source."""


def _hub_rows(dataset_id: str, split: str, **kwargs: Any) -> list[Record]:
    hub.require_hub(f"dataset {dataset_id!r}", offline_hint=OFFLINE_HINT)
    import datasets

    try:
        rows = datasets.load_dataset(dataset_id, split=split, **kwargs)
    except (ConnectionError, OSError) as err:
        raise DataError(f"could not load {dataset_id!r} from the hub: {err}. {OFFLINE_HINT}") from None
    return [dict(row) for row in rows]


def _alpaca(cfg: DataConfig) -> list[Record]:
    rows = _hub_rows("tatsu-lab/alpaca", cfg.split)
    return [{**r, "prompt": r["instruction"], "response": r["output"]} for r in rows]


def _oasst1(cfg: DataConfig) -> list[Record]:
    # As qlora.py: the whole "### Human: ... ### Assistant: ..." dialogue is the target.
    rows = _hub_rows("timdettmers/openassistant-guanaco", cfg.split)
    return [{**r, "prompt": "", "response": r["text"]} for r in rows]


def _self_instruct(cfg: DataConfig) -> list[Record]:
    rows = _hub_rows("yizhongw/self_instruct", cfg.split, name="self_instruct")
    return [{**r, "prompt": r["prompt"], "response": r["completion"]} for r in rows]


def _longform(cfg: DataConfig) -> list[Record]:
    rows = _hub_rows("akoksal/LongForm", cfg.split)
    return [{**r, "prompt": r["input"], "response": r["output"]} for r in rows]


def _chip2(cfg: DataConfig) -> list[Record]:
    rows = _hub_rows("laion/OIG", cfg.split, data_files="unified_chip2.jsonl")
    records = []
    for r in rows:
        human, _, bot = r["text"].partition("\n<bot>:")
        records.append({**r, "prompt": human.replace("<human>:", "").strip(), "response": bot.strip()})
    return records


FLAN_HUB = "Muennighoff/flan"
"""The FLAN collection on the hub as inputs/targets rows (the one LitGPT's FLAN data module reads)."""


def _flan_v2(cfg: DataConfig) -> list[Record]:
    if cfg.path is None:
        rows = _hub_rows(FLAN_HUB, cfg.split)
        source = FLAN_HUB
    else:
        rows = read_local_file(cfg.path)
        source = str(cfg.path)
    missing = [i for i, r in enumerate(rows) if "inputs" not in r or "targets" not in r]
    if missing:
        raise DataError(f"data.path: FLAN v2 rows need 'inputs' and 'targets' fields; row "
                        f"{missing[0] + 1} of {source} lacks them")
    return [{**r, "prompt": r["inputs"], "response": r["targets"]} for r in rows]


def _mmlu_heldout(cfg: DataConfig) -> list[Record]:
    from qsweep.trainers import assets, mmlu

    questions = mmlu.load_questions(assets.ensure("mmlu") / "mmlu.jsonl")
    return [
        {
            "subject": q.subject,
            "prompt": mmlu.subject_header(q.subject) + mmlu.format_question(q),
            "response": " " + q.answer_letter,
        }
        for q in questions
        if q.subject in mmlu.TRAIN_SUBJECTS
    ]


def _local_file(cfg: DataConfig) -> list[Record]:
    assert cfg.path is not None
    rows = read_local_file(cfg.path)
    required = [("data.response_field", cfg.response_field)]
    if default_template(cfg) in TEMPLATES:  # format-string templates name their own fields
        required.append(("data.prompt_field", cfg.prompt_field))
    for key, field in required:
        lacking = next((i for i, r in enumerate(rows) if field not in r), None)
        if lacking is not None:
            raise DataError(f"{key}: row {lacking + 1} of {cfg.path} has no field {field!r} "
                            f"(fields: {', '.join(rows[lacking])})")
    return [{**r, "prompt": r.get(cfg.prompt_field, ""), "response": r[cfg.response_field]}
            for r in rows]


OFFLINE_HINT = (
    "Offline alternatives: data.name=mmlu-heldout (built from the offline MMLU asset) or "
    "data.path=FILE.jsonl with prompt/response fields; HF_HUB_OFFLINE=1 uses the local hub cache."
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("alpaca", "tatsu-lab/alpaca, 52k instructions", _alpaca, default_template="alpaca"),
        Recipe("oasst1", "timdettmers/openassistant-guanaco (the Guanaco OASST1 subset)", _oasst1),
        Recipe("self-instruct", "yizhongw/self_instruct", _self_instruct),
        Recipe("longform", "akoksal/LongForm", _longform),
        Recipe("chip2", "laion/OIG unified_chip2", _chip2),
        Recipe("flan_v2", f"FLAN v2: {FLAN_HUB} from the hub, or data.path, a local JSONL with "
               "inputs/targets fields", _flan_v2, takes_path=True),
        Recipe("mmlu-heldout", "offline: MMLU questions of the 4 subjects held out from "
               "evaluation, in lm-eval's prompt format", _mmlu_heldout),
    )
}


def load_records(cfg: DataConfig) -> list[Record]:
    """Records with ``prompt`` and ``response`` for ``cfg`` (recipe or local file), limited."""
    loader = RECIPES[cfg.name].load if cfg.name else _local_file
    records = loader(cfg)
    if cfg.limit is not None:
        records = records[: cfg.limit]
    if not records:
        raise DataError(f"data: no examples in {cfg.name or cfg.path}")
    return records


def read_local_file(path: Path) -> list[Record]:
    """Rows of a JSONL, JSON (a list of objects) or CSV file."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        if suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rows, list):
                raise DataError(f"data.path: {path} must hold a JSON list of objects")
            return rows
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except json.JSONDecodeError as err:
        raise DataError(f"data.path: {path} is not valid JSON: {err}") from None


def default_template(cfg: DataConfig) -> str:
    """The template a config uses: its own, else its recipe's, else ``plain``."""
    if cfg.template is not None:
        return cfg.template
    return RECIPES[cfg.name].default_template if cfg.name else "plain"


def render_prompt(record: Record, template: str, apply_chat: Callable[[str], str]) -> str:
    """The prompt text of ``record`` under ``template`` (see :data:`TEMPLATES`)."""
    if template == "plain":
        return str(record["prompt"])
    if template == "alpaca":
        instruction = record.get("instruction", record["prompt"])
        if record.get("input"):
            return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=record["input"])
        return ALPACA_PROMPT.format(instruction=instruction)
    if template == "chat":
        return apply_chat(str(record["prompt"]))
    try:
        return template.format(**record)
    except KeyError as err:
        raise DataError(f"data.template: field {err.args[0]!r} is not in the records "
                        f"(fields: {', '.join(record)})") from None
