"""``SoftPromptConfig``: one dataclass, every strategy a field with its help text and a ``str`` Enum of its names.

Text and label inits are tokenised here, when the config is built with a tokenizer, so that the saved
``adapter_config.json`` records the exact token ids: the init can be reproduced later without the tokenizer, and the
prompt module never loads one. What an init still lacks is reported when a model is built (``check_model``): PEFT
builds every config class with no arguments and fills fields in later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from peft import PeftType, PromptLearningConfig, TaskType

from ..errors import HiddenSizeMismatchError, InvalidConfigError, UnknownStrategyError, UnsupportedModelError
from .encoders import Reparameterization
from .placement import Placement, fill_deep_layout, refuse_checkpointing
from .strategies import INIT_STRATEGIES, Init, LengthPolicy, load_local_tokenizer

SOFT_PROMPT = "SOFT_PROMPT"


def _member(enum: type[Enum], value: Any, field_name: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum)  # type: ignore[attr-defined]
        raise UnknownStrategyError(f"Unknown {field_name} {value!r}; choose one of {choices}.") from None


@dataclass
class SoftPromptConfig(PromptLearningConfig):
    """A soft prompt: ``num_virtual_tokens`` trainable vectors put before the input embeddings of a frozen model
    (``placement='input'``), or trainable keys/values of that many virtual tokens in every layer (``'deep'``).

    Example::

        config = SoftPromptConfig(task_type="CAUSAL_LM", init="text", tokenizer=tokenizer,
                                  init_text="Answer like a motivational coach:", text_length_policy="exact")
        model = peft.get_peft_model(base_model, config)
        deep = SoftPromptConfig(task_type="CAUSAL_LM", placement="deep", init="frequent", tokenizer=tokenizer,
                                init_texts=train_texts, num_virtual_tokens=16)
    """

    placement: Placement | str = field(
        default=Placement.INPUT,
        metadata={
            "help": "Where the virtual tokens live: 'input' (vectors before the input embeddings; the model computes "
            "their keys/values) or 'deep' (keys and values in every layer, as in prefix tuning / P-tuning v2). A deep "
            "prompt starts from the keys/values the frozen model computes for the chosen init, so it starts exactly "
            "where the input-level prompt of that init is. Deep prompts train their values directly "
            "(reparameterization='direct')."
        },
    )
    num_key_value_heads: int | None = field(
        default=None, metadata={"help": "Filled in for a deep prompt: the base model's key/value heads per layer."}
    )
    head_dim: int | None = field(
        default=None, metadata={"help": "Filled in for a deep prompt: the size of one key/value head."}
    )
    init: Init | str = field(
        default=Init.RANDOM,
        metadata={
            "help": "How the virtual tokens start: 'random' (normal noise), 'vocab' (embeddings of tokens sampled from "
            "the vocabulary), 'text' (embeddings of `init_text`), 'labels' (one token per class label word, averaged "
            "over its sub-tokens; the rest sampled from the vocabulary), 'frequent' (embeddings of tokens drawn from "
            "the 256 most frequent in `init_texts`, the training texts) or 'adapter' (the prompt of an existing "
            "soft-prompt adapter at `init_adapter`: transfer between tasks)."
        },
    )
    init_text: str | None = field(default=None, metadata={"help": "Text whose token embeddings start the prompt."})
    text_length_policy: LengthPolicy | str | None = field(
        default=None,
        metadata={
            "help": "What to do when the text's token count differs from `num_virtual_tokens`: 'repeat' (cycle the "
            "text), 'truncate' (keep the first tokens; also requires the text to be at least that long, else "
            "'repeat' or 'pad'), 'pad' (fill the rest with tokens sampled from the vocabulary) or 'exact' "
            "(`num_virtual_tokens` becomes the text's token count). Unset, a length mismatch is an error."
        },
    )
    tokenizer: Any = field(
        default=None,
        repr=False,
        compare=False,
        metadata={
            "help": "A tokenizer object or a local tokenizer folder, used once to tokenise `init_text`/`label_words`. "
            "Never fetched from the network and never saved (a folder path is recorded in `tokenizer_name_or_path`)."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "The local tokenizer folder used for the init, when one was given as a path."}
    )
    add_special_tokens: bool = field(
        default=False, metadata={"help": "Whether the init text is tokenised with the tokenizer's special tokens."}
    )
    label_words: list[str] | None = field(
        default=None, metadata={"help": "Class-label words for the 'labels' init, one virtual token each."}
    )
    init_texts: list[str] | None = field(
        default=None,
        repr=False,
        compare=False,
        metadata={
            "help": "Training texts for the 'frequent' init, tokenised once with `tokenizer`; never saved (the token "
            "ids drawn are, in `init_token_ids`)."
        },
    )
    init_adapter: str | None = field(
        default=None, metadata={"help": "Folder of a soft-prompt adapter whose prompt starts this one ('adapter')."}
    )
    init_seed: int | None = field(
        default=None,
        metadata={"help": "Seed for the 'random'/'vocab'/'frequent' init and the 'pad' policy, for reproducibility."},
    )
    init_token_ids: list[int] | None = field(
        default=None,
        metadata={"help": "Filled in: the token ids the init used, so it can be reproduced without a tokenizer."},
    )
    label_token_ids: list[list[int]] | None = field(
        default=None, metadata={"help": "Filled in: the sub-token ids of each label word ('labels' init)."}
    )
    num_anchor_tokens: int = field(
        default=0,
        metadata={
            "help": "The first k virtual tokens stay fixed at their initial (text) embeddings; the rest train. "
            "Anchors survive every reparameterization."
        },
    )
    reparameterization: Reparameterization | str = field(
        default=Reparameterization.DIRECT,
        metadata={
            "help": "How the trained vectors become the prompt: 'direct' (they are the prompt), 'mlp' or 'lstm' "
            "(p-tuning encoders) or 'residual' (MLP with a skip connection, Residual Prompt Tuning). The encoder is "
            "saved next to the final prompt so training can resume; inference loads only the final prompt."
        },
    )
    encoder_hidden_size: int | None = field(
        default=None, metadata={"help": "Hidden width of the mlp/lstm/residual encoder (default: the model width)."}
    )
    encoder_num_layers: int = field(default=2, metadata={"help": "Number of LSTM layers of the 'lstm' encoder."})
    encoder_dropout: float = field(default=0.0, metadata={"help": "Dropout inside the reparameterization encoder."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType(SOFT_PROMPT)  # a member peft_ext adds to PeftType when it is imported
        self.placement = _member(Placement, self.placement, "placement")
        self.init = _member(Init, self.init, "init")
        self.reparameterization = _member(Reparameterization, self.reparameterization, "reparameterization")
        if self.is_deep and self.reparameterization is not Reparameterization.DIRECT:
            raise InvalidConfigError(
                f"placement='deep' trains the keys/values directly; reparameterization="
                f"{str(self.reparameterization)!r} applies to input-level prompts. Use reparameterization='direct' "
                "or placement='input'."
            )
        if self.text_length_policy is not None:
            self.text_length_policy = _member(LengthPolicy, self.text_length_policy, "text_length_policy")
        if self.num_anchor_tokens < 0:
            raise InvalidConfigError(f"num_anchor_tokens must be >= 0, got {self.num_anchor_tokens}.")
        if self.num_virtual_tokens is not None and self.num_virtual_tokens < 1:
            raise InvalidConfigError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}.")
        strategy = INIT_STRATEGIES[Init(self.init)]
        if self.tokenizer is not None:
            tokenizer = self.tokenizer
            if isinstance(tokenizer, (str, os.PathLike)):
                self.tokenizer_name_or_path = str(tokenizer)
                tokenizer = load_local_tokenizer(str(tokenizer))
            strategy.resolve(self, tokenizer)
            self.tokenizer = self.init_texts = None  # used once; the ids they produced are what gets saved
        strategy.complete(self)

    def check_model(self, model: Any) -> None:
        """Raise a named error unless a prompt of this config can be built for ``model``; called by PEFT's build."""
        if self.task_type != TaskType.CAUSAL_LM or getattr(model.config, "is_encoder_decoder", False):
            raise UnsupportedModelError(
                f"SoftPromptConfig supports task_type='CAUSAL_LM' on decoder-only models; got task_type="
                f"{self.task_type!r} on {type(model).__name__}."
            )
        hidden = model.get_input_embeddings().weight.shape[1]
        if self.token_dim != hidden:
            raise HiddenSizeMismatchError(
                f"The adapter is {self.token_dim} wide but {type(model).__name__}'s hidden size is {hidden}: "
                "it was made for a different base model."
            )
        if self.is_deep:
            fill_deep_layout(self, model)
            if not self.inference_mode:
                refuse_checkpointing(model)
        if self.inference_mode:
            return  # the saved prompt is loaded: no init runs
        INIT_STRATEGIES[Init(self.init)].check(self)
        if self.num_virtual_tokens is None:
            raise InvalidConfigError(
                "num_virtual_tokens is required (or use init='text' with text_length_policy='exact')."
            )
        if self.num_anchor_tokens > self.num_virtual_tokens:
            raise InvalidConfigError(
                f"num_anchor_tokens ({self.num_anchor_tokens}) exceeds num_virtual_tokens ({self.num_virtual_tokens})."
            )

    @property
    def is_deep(self) -> bool:
        """Whether the virtual tokens are keys/values in every layer (``placement='deep'``)."""
        return self.placement is Placement.DEEP

    @property
    def prompt_width(self) -> int:
        """The width of one virtual token's stored vector: the hidden size, or (deep) every layer's keys and values."""
        if not self.is_deep:
            return int(self.token_dim)
        assert self.num_layers and self.num_key_value_heads and self.head_dim, "check_model fills the deep layout"
        return self.num_layers * 2 * self.num_key_value_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        result = super().to_dict()
        result["tokenizer"] = result["init_texts"] = None  # never serialised; the ids they produced are
        result["peft_type"] = SOFT_PROMPT
        for name in ("placement", "init", "text_length_policy", "reparameterization"):  # plain strings in the JSON
            if isinstance(result[name], Enum):
                result[name] = result[name].value
        return result
