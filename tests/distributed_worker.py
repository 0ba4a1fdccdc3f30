"""One rank of tests/test_distributed.py's data-parallel run, and the training code its one-process reference shares.

Run by ``python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py <folder>``: the folder holds
``spec.json`` (texts and training knobs) and the saved tiny tokenizer; each rank trains through
``peft_ext.training.train_soft_prompts`` (Trainer -> DDP, gloo on CPU) and writes ``rank<N>.pt``: its initial and
final prompt, the token ids of the rows it embedded at each step, its logged losses and the process group it ran in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_models.py, also when run as a script

from peft import get_peft_model  # noqa: E402
from tiny_models import make_model  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from peft_ext import SoftPromptConfig  # noqa: E402
from peft_ext.training import train_soft_prompts  # noqa: E402


def train_prompt(
    tokenizer: Any, spec: dict[str, Any], output_dir: Path, batch_size: int, **training_args: Any
) -> dict[str, Any]:
    """Train one soft prompt of the tiny Llama on ``spec["texts"]`` with ``batch_size`` rows per process."""
    model = get_peft_model(
        make_model("llama"),
        SoftPromptConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=spec["num_virtual_tokens"],
            init_seed=0,
            placement=spec.get("placement", "input"),
        ),
    )
    initial = model.prompt_encoder["default"].prompt().detach().clone()
    seen: list[list[list[int]]] = []  # per training forward: the token ids of each row of this process's batch
    embeddings = model.get_base_model().get_input_embeddings()
    embeddings.register_forward_hook(lambda module, args, output: seen.append(args[0].tolist()))
    result = train_soft_prompts(
        model,
        tokenizer,
        spec["texts"],
        output_dir,
        max_steps=spec["steps"],
        batch_size=batch_size,
        learning_rate=spec["learning_rate"],
        show_progress=False,
        use_cpu=True,
        **training_args,
    )
    return {
        "initial": initial,
        "prompt": model.prompt_encoder["default"].prompt().detach().clone(),
        "seen": seen,
        "losses": result.losses,
        "steps": result.steps,
    }


def main(folder: Path) -> None:
    spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    outcome = train_prompt(tokenizer, spec, folder / "run", spec["per_device_batch_size"], ddp_backend="gloo")
    outcome["rank"] = torch.distributed.get_rank()
    outcome["world_size"] = torch.distributed.get_world_size()
    outcome["backend"] = torch.distributed.get_backend()
    torch.save(outcome, folder / f"rank{outcome['rank']}.pt")
    torch.distributed.destroy_process_group()  # else gloo's threads can abort the process at exit


if __name__ == "__main__":
    main(Path(sys.argv[1]))
