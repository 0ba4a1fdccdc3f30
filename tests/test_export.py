"""export_prompt_tuning writes an adapter that plain PEFT loads without peft_ext, with identical logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import get_peft_model
from tiny_models import make_model

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
        env={**os.environ, "PEFT_EXT_AUTOLOAD": "0"},  # plain PEFT: without peft-ext's startup hook too
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


def test_export_warns_where_stock_prompt_generate_is_broken(tmp_path):
    """The export hands users to stock PEFT's prompt-tuning generate; where the installed transformers breaks it
    (>= 5.24, checked against PEFT's forward in test_peft_contract.py), the export says so."""
    import warnings

    import transformers
    from packaging.version import Version

    model = get_peft_model(make_model(), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, init_seed=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_prompt_tuning(model, tmp_path)
    messages = [str(w.message) for w in caught if "use_exact_generate" in str(w.message)]
    assert len(messages) == (1 if Version(transformers.__version__) >= Version("5.24.0") else 0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # RoPE and absolute positions; ALiBi (Bloom) comes out right
def test_stock_prompt_generate_breakage_is_where_we_say(family):
    """Guards the version boundary the warning and README state: stock generate disagrees with stock forward exactly
    when ``stock_prompt_generate_is_broken()``."""
    from peft import PromptTuningConfig

    from peft_ext.integration import stock_prompt_generate_is_broken

    model = get_peft_model(make_model(family), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6)).eval()
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.mul_(8)
        ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
        expected = ids
        for _ in range(5):
            expected = torch.cat([expected, model(input_ids=expected).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    try:
        right = torch.equal(model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0), expected)
    except (IndexError, RuntimeError):
        right = False
    assert right != stock_prompt_generate_is_broken()
