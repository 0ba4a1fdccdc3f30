"""`peft-ext demo` end to end on a tiny model: train both prompts, compare, push, pull by constraint, serve.

Every value of the summary is checked against something the test knows independently: the arguments it passed, the
tiny model it built, the files the demo wrote, or another part of the run (the frozen base model answers the same
before and after training; the served answers are the in-process answers of the same prompts).
"""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load_file
from tiny_models import make_model

from hub import LocalStore, versions
from peft_ext.cli import main
from peft_ext.cli.train import DEFAULT_LR

TASKS = ("prompts", "quotes")
ADAPTERS = ("base model", *TASKS)
INIT_TEXTS = {  # peft_ext/cli/demo.py's fixed-text init, restated
    "prompts": "Write a prompt that tells an AI assistant which role to play:",
    "quotes": "Share an inspiring, motivational quote:",
}
STAGES = {
    "load the base model",
    "answer the seed inputs (before)",
    "held-out losses (before)",
    "train both prompts in one mixed-batch run",
    "answer the seed inputs (after)",
    "held-out losses (after)",
    "push both as 1.0.0, pull back by ^1.0 (base verified)",
    "serve both from one MultiPromptModel",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _finite_positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _init_keys_values(base, embeddings):
    """The keys/values the frozen base computes for ``embeddings``, in PEFT's prefix layout (per token: each layer's
    keys then values)."""
    with torch.no_grad():
        cache = base(inputs_embeds=embeddings[None], use_cache=True).past_key_values
    per_layer = [torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers]  # [2, heads, n, head_dim]
    return torch.stack(per_layer).permute(3, 0, 1, 2, 4).reshape(embeddings.shape[0], -1)


def test_demo_runs_every_stage_and_writes_its_artefacts(tmp_path, tiny_tokenizer, capsys):
    model = tmp_path / "tiny-model"
    base = make_model("llama")
    base.save_pretrained(model)
    tiny_tokenizer.save_pretrained(model)
    output = tmp_path / "out"
    assert main(["demo", "--model", str(model), "--steps", "2", "--train-texts", "8", "--output", str(output)]) == 0

    summary = json.loads((output / "summary.json").read_text())

    # The base model it loaded is the tiny Llama saved above.
    info = summary["base_model"]
    assert info["model_id"] == str(model)
    assert (info["architecture"], info["hidden_size"], info["vocab_size"]) == ("LlamaForCausalLM", 32, 64)

    # Training: 2 steps, logged every step, so one finite positive loss per step; 8 texts per task.
    training = summary["training"]
    assert set(training) == {"steps", "losses", "texts"}
    assert training["steps"] == 2 and training["texts"] == {"prompts": 8, "quotes": 8}
    losses = training["losses"]
    assert isinstance(losses, list) and len(losses) == 2, losses
    assert all(_finite_positive(loss) for loss in losses), losses

    # Held-out losses: finite and positive for every adapter on every task; training lowered each prompt's loss on
    # its own task, and left the frozen base model's losses exactly as they were.
    heldout = summary["heldout_loss"]
    for when in ("before", "after"):
        assert set(heldout[when]) == set(ADAPTERS)
        for adapter in ADAPTERS:
            assert set(heldout[when][adapter]) == set(TASKS)
            assert all(_finite_positive(v) for v in heldout[when][adapter].values()), heldout[when][adapter]
    assert heldout["after"]["base model"] == heldout["before"]["base model"]
    for task in TASKS:
        assert heldout["after"][task][task] < heldout["before"][task][task], (task, heldout)

    # Answers: every adapter answers both seed inputs; the frozen base model answers the same after training.
    answers = summary["answers"]
    for when in ("before", "after"):
        assert set(answers[when]) == set(ADAPTERS)
        assert all(set(answers[when][a]) == set(TASKS) for a in ADAPTERS)
        assert all(isinstance(text, str) for a in ADAPTERS for text in answers[when][a].values())
    assert answers["after"]["base model"] == answers["before"]["base model"]

    # Each trained adapter: a deep prompt (the default recipe's placement) saved with the text init (tokenised here
    # independently) and moved away from it by training - its start being the keys/values the frozen model computes
    # for the init text's embeddings; pushed as 1.0.0 to <output>/store and pulled back by ^1.0 with the very tensors
    # that were saved.
    embeddings = base.get_input_embeddings().weight.detach()
    layers, heads = base.config.num_hidden_layers, base.config.num_key_value_heads
    head_dim = base.config.hidden_size // base.config.num_attention_heads
    store = LocalStore(output / "store")
    assert summary["store"]["root"] == str(store.root)
    for task in TASKS:
        saved = output / "adapters" / task
        config = json.loads((saved / "adapter_config.json").read_text())
        ids = tiny_tokenizer(INIT_TEXTS[task], add_special_tokens=False)["input_ids"]
        assert config["peft_type"] == "SOFT_PROMPT" and config["init"] == "text" and config["placement"] == "deep"
        assert config["init_token_ids"] == ids and config["num_virtual_tokens"] == len(ids)
        prompt = load_file(saved / "adapter_model.safetensors")["prompt_embeddings"]
        assert prompt.shape == (len(ids), layers * 2 * heads * head_dim) and torch.isfinite(prompt).all()
        start = _init_keys_values(base, embeddings[ids])
        moved = (prompt - start).abs().max().item()  # Adam moves a value by about the learning rate per step
        assert 0 < moved <= 3 * 2 * DEFAULT_LR["deep"], f"{task}: moved {moved} in 2 steps from its text init"

        pulled = summary["store"]["pulled"][task]
        assert pulled == str(store.root / "demo" / "seed-prompts" / task / "1.0.0")
        pulled_tensors = load_file(f"{pulled}/adapter_model.safetensors")
        assert set(pulled_tensors) == {"prompt_embeddings"}
        assert torch.equal(pulled_tensors["prompt_embeddings"], prompt)
        assert [(str(e.version), e.yanked) for e in versions("demo/seed-prompts", task, store=store)] == [
            ("1.0.0", False)
        ]

    # Serving the pulled prompts and the bare base in one batch gives the answers of the same prompts in process.
    served = [" ".join(text.split()) for text in answers["served"]]
    after = answers["after"]
    assert served == [after["prompts"]["prompts"], after["quotes"]["quotes"], after["base model"]["quotes"]]

    # Plots are PNG files at the paths the summary names.
    assert summary["plots"] == {
        "training_loss": str(output / "loss.png"),
        "heldout_loss": str(output / "heldout_loss.png"),
    }
    for name in ("loss.png", "heldout_loss.png"):
        data = (output / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000

    # Every stage was timed once; the total covers them all.
    seconds = summary["seconds"]
    assert set(seconds) == STAGES | {"total"}
    assert all(isinstance(s, float) and s > 0 for s in seconds.values()), seconds
    assert seconds["total"] >= sum(s for name, s in seconds.items() if name != "total")

    printed = capsys.readouterr().out
    assert "Held-out loss" in printed and "Serving both pulled prompts" in printed
    assert all(f"s] {stage}\n" in printed for stage in STAGES)
