"""Offline stand-ins for the tiny Hub models PEFT's tests load by id.

Each stand-in is a model built from a config (random weights, tiny sizes) plus a small word-level tokenizer, written
into a private Hugging Face cache in the Hub cache layout (``models--org--name/snapshots/<sha>/`` and
``refs/<revision>``), so ``from_pretrained("org/name")`` resolves it with ``HF_HUB_OFFLINE=1`` exactly as it resolves a
real download. Usage: ``python -m conformance.stand_ins <hub cache dir>``; it skips stand-ins that already exist.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BUILDER_VERSION = "2"  # bump to rebuild every stand-in
VOCAB_SIZE = 1024
WORDS = (
    "this is a test prompt hello world the quote quotes life love be yourself everyone else already taken "
    "you only live once but if do it right enough so many books little time two things are infinite universe "
    "and human stupidity i am not sure about former"
).split()
SPECIAL = {"<pad>": 0, "</s>": 1, "<s>": 2, "<unk>": 3}
COMMON: dict[str, Any] = {"vocab_size": VOCAB_SIZE, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}


def _decoder(config_cls: str, model_cls: str, **kwargs: Any) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        config = getattr(transformers, config_cls)(**COMMON, **kwargs)
        return getattr(transformers, model_cls)(config)

    return build


_LLAMA_LIKE = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}

# Hub id -> (architecture, builder). The architecture is what the conformance summary groups results by.
MODELS: dict[str, tuple[str, Callable[[], torch.nn.Module]]] = {
    "peft-internal-testing/tiny-random-OPTForCausalLM": (
        "OPT",
        _decoder(
            "OPTConfig",
            "OPTForCausalLM",
            hidden_size=16,
            word_embed_proj_dim=16,
            ffn_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
        ),
    ),
    "peft-internal-testing/tiny-random-GPT2LMHeadModel": (
        "GPT2",
        _decoder("GPT2Config", "GPT2LMHeadModel", n_embd=16, n_layer=2, n_head=4, n_positions=256),
    ),
    "hf-internal-testing/tiny-random-gpt2": (
        "GPT2",
        _decoder("GPT2Config", "GPT2LMHeadModel", n_embd=32, n_layer=2, n_head=4, n_positions=256),
    ),
    "peft-internal-testing/tiny-random-GPTJForCausalLM": (
        "GPTJ",
        _decoder("GPTJConfig", "GPTJForCausalLM", n_embd=16, n_layer=2, n_head=4, rotary_dim=4, n_positions=256),
    ),
    "trl-internal-testing/tiny-random-LlamaForCausalLM": (
        "Llama",
        _decoder("LlamaConfig", "LlamaForCausalLM", **_LLAMA_LIKE),
    ),
    "peft-internal-testing/tiny-dummy-qwen2": ("Qwen2", _decoder("Qwen2Config", "Qwen2ForCausalLM", **_LLAMA_LIKE)),
    "hf-internal-testing/tiny-random-MistralForCausalLM": (
        "Mistral",
        _decoder("MistralConfig", "MistralForCausalLM", **_LLAMA_LIKE),
    ),
    "hf-internal-testing/tiny-random-Gemma3ForCausalLM": (
        "Gemma3",
        _decoder("Gemma3TextConfig", "Gemma3ForCausalLM", head_dim=4, sliding_window=64, **_LLAMA_LIKE),
    ),
    # Not in PEFT 0.21.2's model lists; the conformance plugin adds it for the SOFT_PROMPT variants (ALiBi positions).
    "hf-internal-testing/tiny-random-BloomForCausalLM": (
        "Bloom",
        _decoder("BloomConfig", "BloomForCausalLM", hidden_size=16, n_layer=2, n_head=4),
    ),
}
BLOOM_ID = "hf-internal-testing/tiny-random-BloomForCausalLM"
# test_config.py loads a LoRA adapter config from this repo at revision "test".
LORA_CONFIG_REPO = ("peft-internal-testing/tiny-opt-lora-revision", "test")


def architecture(model_id: str) -> str | None:
    entry = MODELS.get(model_id)
    return entry[0] if entry else None


def _tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2/Qwen2 style: every text tokenises, no unknown tokens) with ids < VOCAB_SIZE."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=list(SPECIAL), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator([" ".join(WORDS)], trainer)
    assert backend.get_vocab_size() <= VOCAB_SIZE and backend.token_to_id("<pad>") == SPECIAL["<pad>"]
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )


def _snapshot(hub_cache: Path, repo_id: str, revision: str = "main") -> tuple[Path, Path]:
    """The snapshot folder and ref file of ``repo_id`` at ``revision`` in the Hub cache layout."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    # A new builder or transformers version gives new snapshots, so stale stand-ins are never reused.
    seed = f"{repo_id}@{revision}#{BUILDER_VERSION}#{transformers.__version__}"
    sha = hashlib.sha1(seed.encode()).hexdigest()
    return repo / "snapshots" / sha, repo / "refs" / revision


def _publish(folder: Path, ref: Path) -> None:
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(folder.name)  # written last: a half-built snapshot is never referenced


def tokenizer_folder(hub_cache: Path) -> Path:
    """A local folder holding the stand-in tokenizer (the one every stand-in model ships)."""
    return _snapshot(hub_cache, "trl-internal-testing/tiny-random-LlamaForCausalLM")[0]


def build(hub_cache: Path) -> list[str]:
    """Create the stand-ins missing from ``hub_cache``; returns the ids built."""
    built = []
    tokenizer = None
    for repo_id, (_, make) in MODELS.items():
        folder, ref = _snapshot(hub_cache, repo_id)
        if ref.is_file() and ref.read_text() == folder.name:
            continue
        torch.manual_seed(0)
        make().save_pretrained(folder)
        tokenizer = tokenizer or _tokenizer()
        tokenizer.save_pretrained(folder)
        _publish(folder, ref)
        built.append(repo_id)
    repo_id, revision = LORA_CONFIG_REPO
    folder, ref = _snapshot(hub_cache, repo_id, revision)
    if not (ref.is_file() and ref.read_text() == folder.name):
        from peft import LoraConfig

        LoraConfig(base_model_name_or_path="peft-internal-testing/tiny-random-OPTForCausalLM").save_pretrained(folder)
        _publish(folder, ref)
        built.append(f"{repo_id}@{revision}")
    return built


def main() -> None:
    transformers.utils.logging.disable_progress_bar()
    built = build(Path(sys.argv[1]))
    print(f"[conformance] stand-ins built: {json.dumps(built) if built else 'none needed'}", flush=True)


if __name__ == "__main__":
    main()
