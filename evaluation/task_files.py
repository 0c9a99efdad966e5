"""The lm-eval task YAML of ``mmlu_offline``, generated from :mod:`qsweep.evaluation.mmlu_categories`.

Like lm-eval's own ``mmlu/default``: one task per subject (same prompt, same few-shot
sampler), tagged by category, grouped into ``mmlu_offline_{stem,humanities,...}`` and the
``mmlu_offline`` group. The files are committed; a test checks they match this generator.
Regenerate with::

    python -m qsweep.evaluation.task_files
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from qsweep.evaluation.mmlu_categories import CATEGORIES, SUBJECT_CATEGORIES

TASKS_DIR = Path(str(resources.files("qsweep.evaluation") / "tasks"))
"""qsweep's lm-eval task folders, package data of ``qsweep.evaluation`` (lm-eval reads them from disk)."""
MMLU_DIR = TASKS_DIR / "mmlu_offline"

TEMPLATE = """\
# Shared by every mmlu_offline_<subject> task: lm-eval's mmlu prompt, offline data.
custom_dataset: !function offline.mmlu_subject_dataset
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
output_type: multiple_choice
doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""  # noqa: E501 (one YAML line, as lm-eval writes it)

_HEADER = "The following are multiple choice questions (with answers) about {subject}.\\n\\n"

OFFLINE_MODULE = '''\
"""Entry points for the task YAML beside this file (lm-eval loads it by path)."""

from qsweep.evaluation.offline_data import mmlu_subject_dataset  # noqa: F401
'''


def files() -> dict[str, str]:
    """File name to content of every generated file."""
    generated = {"_default_template_yaml": TEMPLATE, "offline.py": OFFLINE_MODULE}
    for subject, category in SUBJECT_CATEGORIES.items():
        readable = subject.replace("_", " ")
        generated[f"mmlu_offline_{subject}.yaml"] = (
            f'"dataset_kwargs": {{"subject": "{subject}"}}\n'
            f'"description": "{_HEADER.format(subject=readable)}"\n'
            f'"tag": "mmlu_offline_{category}_tasks"\n'
            f'"include": "_default_template_yaml"\n'
            f'"task": "mmlu_offline_{subject}"\n'
            f'"task_alias": "{subject}"\n'
        )
    for category in CATEGORIES:
        generated[f"_mmlu_offline_{category}.yaml"] = (
            f"group: mmlu_offline_{category}\n"
            f"group_alias: {category.replace('_', ' ')}\n"
            f"task:\n  - mmlu_offline_{category}_tasks\n"
            "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: True\n"
            "metadata:\n  version: 1\n"
        )
    generated["_mmlu_offline.yaml"] = (
        "group: mmlu_offline\ntask:\n"
        + "".join(f"  - mmlu_offline_{category}\n" for category in CATEGORIES)
        + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: True\n"
        "metadata:\n  version: 1\n"
    )
    return generated


def write() -> None:
    MMLU_DIR.mkdir(parents=True, exist_ok=True)
    for name, content in files().items():
        (MMLU_DIR / name).write_text(content)


if __name__ == "__main__":
    write()
    print(f"wrote {len(files())} files to {MMLU_DIR}")
