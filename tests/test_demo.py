"""`peft-ext demo` end to end on a tiny model: train both prompts, compare, push, pull by constraint, serve."""

from __future__ import annotations

import json

from conftest import make_model

from peft_ext.cli import main


def test_demo_runs_every_stage_and_writes_its_artefacts(tmp_path, tiny_tokenizer, capsys):
    model = tmp_path / "tiny-model"
    make_model("llama").save_pretrained(model)
    tiny_tokenizer.save_pretrained(model)
    output = tmp_path / "out"
    assert main(["demo", "--model", str(model), "--steps", "2", "--train-texts", "8", "--output", str(output)]) == 0

    summary = json.loads((output / "summary.json").read_text())
    assert summary["training"] == {
        "steps": 2,
        "losses": summary["training"]["losses"],
        "texts": {"prompts": 8, "quotes": 8},
    }
    assert set(summary["answers"]["after"]) == {"base model", "prompts", "quotes"}
    assert set(summary["heldout_loss"]["after"]["quotes"]) == {"prompts", "quotes"}
    for task in ("prompts", "quotes"):
        pulled = summary["store"]["pulled"][task]
        assert pulled.endswith(f"{task}/1.0.0") and (output / "store").is_dir()
        assert (
            json.loads((output / "adapters" / task / "adapter_config.json").read_text())["peft_type"] == "SOFT_PROMPT"
        )
    assert len(summary["answers"]["served"]) == 3
    assert all((output / name).stat().st_size > 1000 for name in ("loss.png", "heldout_loss.png"))
    assert set(summary["seconds"]) >= {"train both prompts in one mixed-batch run", "total"}
    printed = capsys.readouterr().out
    assert "Held-out loss" in printed and "Serving both pulled prompts" in printed
