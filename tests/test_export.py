"""export_prompt_tuning writes an adapter that plain PEFT loads without peft_ext, with identical logits."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from conftest import make_model
from peft import get_peft_model

from peft_ext import SoftPromptConfig, export_prompt_tuning

FRESH_INTERPRETER = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
assert "peft_ext" not in sys.modules, "the export must not need peft_ext"
with torch.no_grad():
    logits = model(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits
torch.save(logits, sys.argv[3])
"""


def test_export_loads_in_plain_peft(tmp_path, family):
    base = make_model(family)
    base.save_pretrained(tmp_path / "base")
    config = SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, init_seed=0, reparameterization="mlp")
    model = get_peft_model(base, config).eval()
    model.save_pretrained(tmp_path / "ours")
    export_prompt_tuning(tmp_path / "ours", tmp_path / "stock")
    saved = json.loads((tmp_path / "stock" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PROMPT_TUNING" and saved["num_virtual_tokens"] == 4

    script = tmp_path / "load.py"
    script.write_text(FRESH_INTERPRETER)
    out = tmp_path / "logits.pt"
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "base"), str(tmp_path / "stock"), str(out)],
        check=True,
        cwd=tmp_path,
    )
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits
    torch.testing.assert_close(torch.load(out), ours, atol=1e-5, rtol=0)


def test_export_from_a_peft_model(tmp_path):
    model = get_peft_model(make_model(), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, init_seed=2))
    export_prompt_tuning(model, tmp_path)
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "adapter_model.safetensors")
    assert list(exported) == ["prompt_embeddings"]
    torch.testing.assert_close(exported["prompt_embeddings"], model.prompt_encoder["default"].prompt().detach())
