"""The repo's model card: PEFT-adapter metadata plus a table of tasks and versions.

PEFT's own push loses its card (transformers rewrites it with ``library_name: transformers``); this card says what the
repo is: ``library_name: peft``, ``base_model`` (every base the tasks were trained on), ``base_model_relation:
adapter``. The table is rebuilt from the store on every push and yank, so it is never hand-edited.
"""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub import ModelCard, ModelCardData

TAGS = ["peft", "peft-ext", "soft-prompt", "prompt-tuning"]


@dataclass(frozen=True)
class CardRow:
    task: str
    version: str
    yanked: bool
    base_model: str
    created_at: str
    kind: str = "input"  # where the virtual tokens live: "input" (input embeddings) or "deep" (keys/values)


def render_card(repo: str, rows: list[CardRow], base_models: list[str]) -> str:
    """Card text for ``repo``; ``base_models`` are Hub ids (local paths and unknown bases are left out)."""
    bases = sorted(set(base_models))
    data = ModelCardData(
        library_name="peft",
        base_model=(bases[0] if len(bases) == 1 else bases) or None,
        tags=TAGS + sorted({f"task:{row.task}" for row in rows}),
        base_model_relation="adapter" if bases else None,
    )
    lines = [
        f"# {repo}",
        "",
        "Soft-prompt adapters (PEFT format; `deep` ones hold keys/values for every layer), one folder per task and "
        "version, managed with "
        "[peft-ext](https://pypi.org/project/peft-ext/) `hub`. Each version is immutable "
        "(on the Hub tagged `<task>/v<version>`), "
        "and carries `peft_ext_manifest.json` with file hashes and the exact base model it was trained on.",
        "",
        "```python",
        "from hub import pull",
        f'path = pull("{repo}", "<task>", "^1.0", base_model=model)  # refuses a different base model',
        "```",
        "",
        "| task | version | kind | base model | created | status |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r.task, _key(r.version)), reverse=False):
        status = "yanked" if row.yanked else "available"
        cells = [row.task, row.version, row.kind, _cell(row.base_model), row.created_at, status]
        lines.append("| " + " | ".join(cells) + " |")
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    return str(card)


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "unknown"
