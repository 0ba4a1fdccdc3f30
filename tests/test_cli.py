"""The peft-ext command: train end to end on a tiny model, push, and one-line user errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

from tiny_models import make_model

from peft_ext.cli import main
from peft_ext.cli.train import DEFAULT_LR


def _tiny_model_folder(tmp_path, tokenizer):
    folder = tmp_path / "tiny-model"
    make_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_train_writes_adapter_plot_summary_and_pushes(tmp_path, tiny_tokenizer, capsys):
    model = _tiny_model_folder(tmp_path, tiny_tokenizer)
    data = tmp_path / "quotes.jsonl"
    data.write_text("\n".join(json.dumps({"quote": q}) for q in ["be kind always", "dream a great dream"] * 4))
    store = tmp_path / "store"
    code = main(
        [
            "train",
            str(data),
            "--model",
            str(model),
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--init",
            "text",
            "--init-text",
            "you should smile",
            "--text-length-policy",
            "exact",
            "--reparameterization",
            "residual",
            "--output",
            str(tmp_path / "run"),
            "--push",
            "me/prompts",
            "--store-root",
            str(store),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and len(summary["losses"]) == 3 and summary["pushed"] == "me/prompts:quotes@1.0.0"
    assert summary["placement"] == "input"  # an encoder makes an input-level prompt: the default follows
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    assert (store / "me" / "prompts" / "quotes" / "1.0.0" / "peft_ext_manifest.json").exists()
    assert "pushed me/prompts:quotes@1.0.0" in capsys.readouterr().out


def test_train_with_nothing_set_starts_from_the_data_s_frequent_tokens(tmp_path, tiny_tokenizer):
    model = _tiny_model_folder(tmp_path, tiny_tokenizer)
    data = tmp_path / "a.txt"
    data.write_text("be kind always\ndream a great dream\n" * 4)
    assert main(["train", str(data), "--model", str(model), "--steps", "1", "--output", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    words = tiny_tokenizer("be kind always dream a great", add_special_tokens=False)["input_ids"]
    assert config["init"] == "frequent" and config["num_virtual_tokens"] == 16
    assert set(config["init_token_ids"]) == set(words)  # 6 distinct words, cycled to 16 tokens
    # the best measured recipe (benchmarks/quality.py): a deep prompt at its own learning rate
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert config["placement"] == "deep" and summary["placement"] == "deep"
    assert summary["learning_rate"] == DEFAULT_LR["deep"] != DEFAULT_LR["input"]


def test_training_on_from_an_adapter_keeps_its_kind(tmp_path, tiny_tokenizer):
    """--init adapter continues an input-level prompt as an input-level prompt, unless --placement says otherwise."""
    model = _tiny_model_folder(tmp_path, tiny_tokenizer)
    data = tmp_path / "a.txt"
    data.write_text("be kind always\ndream a great dream\n" * 4)
    common = ["train", str(data), "--model", str(model), "--steps", "1"]
    assert main([*common, "--placement", "input", "--output", str(tmp_path / "first")]) == 0
    adapter = ["--init", "adapter", "--init-adapter", str(tmp_path / "first" / "adapter")]
    for placement, extra in (("input", []), ("deep", ["--placement", "deep"])):
        assert main([*common, *adapter, *extra, "--output", str(tmp_path / placement)]) == 0
        config = json.loads((tmp_path / placement / "adapter" / "adapter_config.json").read_text())
        assert config["placement"] == placement and config["num_virtual_tokens"] == 16


def test_user_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    result = subprocess.run(
        [sys.executable, "-m", "peft_ext.cli", "train", str(bad)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"peft-ext: error: {bad}, line 2: not valid JSON (Expecting value)."]
    assert "Traceback" not in result.stderr


def test_bad_strategy_is_one_line(tmp_path, tiny_tokenizer, capsys):
    data = tmp_path / "a.txt"
    data.write_text("hello world\n")
    model = _tiny_model_folder(tmp_path, tiny_tokenizer)
    assert main(["train", str(data), "--model", str(model), "--num-virtual-tokens", "4", "--init", "zeros"]) == 2
    assert "Unknown init 'zeros'" in capsys.readouterr().err
    assert main(["train", str(data), "--model", str(model), "--num-virtual-tokens", "0"]) == 2  # not the default
    assert "num_virtual_tokens must be >= 1, got 0" in capsys.readouterr().err


def test_train_a_classifier_reports_held_out_accuracy_before_and_after(tmp_path, tiny_tokenizer, capsys):
    model = _tiny_model_folder(tmp_path, tiny_tokenizer)
    rows = [("be kind always", "good"), ("dream a great dream", "great"), ("hello world", "bad")] * 4
    data, held_out = tmp_path / "train.jsonl", tmp_path / "test.csv"
    data.write_text("\n".join(json.dumps({"text": text, "label": label}) for text, label in rows))
    held_out.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows[:3]))
    args = ["train", str(data), "--model", str(model), "--label-column", "label", "--eval", str(held_out)]
    args += [
        "--num-virtual-tokens",
        "4",
        "--init",
        "labels",
        "--steps",
        "16",
        "--lr",
        "0.3",
        "--init-seed",
        "0",
        "--output",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    held = summary["eval"]
    assert held["metric"] == "accuracy" and held["examples"] == 3
    # The labels init takes its words from the data; training on the very rows evaluated must reach all three.
    assert held["after"] == 1.0 and held["after"] >= held["before"]
    assert f"held-out accuracy on 3 rows of {held_out}" in capsys.readouterr().out


def test_train_reports_held_out_loss_of_texts(tmp_path, tiny_tokenizer):
    model = _tiny_model_folder(tmp_path, tiny_tokenizer)
    data, held_out = tmp_path / "train.txt", tmp_path / "test.txt"
    data.write_text("be kind always\ndream a great dream\n" * 4)
    held_out.write_text("be kind always\n")
    args = ["train", str(data), "--model", str(model), "--eval", str(held_out), "--num-virtual-tokens", "4"]
    assert main(args + ["--steps", "6", "--lr", "0.3", "--output", str(tmp_path / "run")]) == 0
    held = json.loads((tmp_path / "run" / "summary.json").read_text())["eval"]
    assert held["metric"] == "loss" and held["after"] < held["before"]


def test_held_out_labels_unseen_in_training_fail_before_any_training(tmp_path, tiny_tokenizer, capsys):
    model = _tiny_model_folder(tmp_path, tiny_tokenizer)
    data, held_out = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    data.write_text('{"text": "hello world", "label": "good"}\n{"text": "be kind", "label": "bad"}\n')
    held_out.write_text('{"text": "hello world", "label": "neutral"}\n')
    args = ["train", str(data), "--model", str(model), "--label-column", "label", "--eval", str(held_out)]
    assert main(args + ["--output", str(tmp_path / "run")]) == 2
    assert "labels ['neutral'] never occur in the training data" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_single_label_is_refused_before_any_training(tmp_path, tiny_tokenizer, capsys):
    model = _tiny_model_folder(tmp_path, tiny_tokenizer)
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello world", "label": "good"}\n{"text": "be kind", "label": "good"}\n')
    args = ["train", str(data), "--model", str(model), "--label-column", "label", "--output", str(tmp_path / "run")]
    assert main(args) == 2
    assert "--label-column label needs at least two labels" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_a_deep_prompt_saves_resumes_and_pushes(tmp_path, tiny_tokenizer):
    """--placement deep through Trainer: held-out loss falls, checkpoints resume, the pushed manifest says deep."""
    model = _tiny_model_folder(tmp_path, tiny_tokenizer)
    data, held_out = tmp_path / "train.txt", tmp_path / "test.txt"
    data.write_text("be kind always\ndream a great dream\n" * 4)
    held_out.write_text("be kind always\n")
    common = ["train", str(data), "--model", str(model), "--placement", "deep", "--num-virtual-tokens", "4"]
    common += ["--lr", "0.1", "--save-steps", "3", "--output", str(tmp_path / "run"), "--eval", str(held_out)]
    assert main([*common, "--steps", "3"]) == 0
    sharing = ["--push", "me/prompts", "--task", "kind", "--store-root", str(tmp_path / "store")]
    assert main([*common, "--steps", "6", "--resume", *sharing]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["eval"]["after"] < summary["eval"]["before"]
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "SOFT_PROMPT" and config["placement"] == "deep"
    manifest = json.loads((tmp_path / "store/me/prompts/kind/1.0.0/peft_ext_manifest.json").read_text())
    assert manifest["adapter"]["kind"] == "deep"
