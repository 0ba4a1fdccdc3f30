"""``SoftPromptConfig``: one dataclass, every strategy a field with its help text.

Text and label inits are tokenised here, when the config is built, so that the saved ``adapter_config.json`` records
the exact token ids: the init can be reproduced later without the tokenizer, and the prompt module never loads one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from peft import PeftType, PromptLearningConfig

from . import init as init_strategies
from .encoders import ENCODERS
from .errors import InvalidConfigError, TokenizerNotAvailableError, UnknownInitError
from .sources import read_saved_prompt

SOFT_PROMPT = "SOFT_PROMPT"


@dataclass
class SoftPromptConfig(PromptLearningConfig):
    """A soft prompt: ``num_virtual_tokens`` trainable vectors put before the input embeddings of a frozen model.

    Example::

        config = SoftPromptConfig(task_type="CAUSAL_LM", init="text", tokenizer=tokenizer,
                                  init_text="Answer like a motivational coach:", text_length_policy="exact")
        model = peft.get_peft_model(base_model, config)
    """

    init: str = field(
        default="random",
        metadata={
            "help": "How the virtual tokens start: 'random' (normal noise), 'vocab' (embeddings of tokens sampled from "
            "the vocabulary), 'text' (embeddings of `init_text`), 'labels' (one token per class label word, averaged "
            "over its sub-tokens; the rest sampled from the vocabulary) or 'adapter' (the prompt of an existing "
            "soft-prompt adapter at `init_adapter`: transfer between tasks)."
        },
    )
    init_text: str | None = field(default=None, metadata={"help": "Text whose token embeddings start the prompt."})
    text_length_policy: str | None = field(
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
    init_adapter: str | None = field(
        default=None, metadata={"help": "Folder of a soft-prompt adapter whose prompt starts this one ('adapter')."}
    )
    init_seed: int | None = field(
        default=None, metadata={"help": "Seed for the 'random'/'vocab' init and the 'pad' policy, for reproducibility."}
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
    reparameterization: str = field(
        default="direct",
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
        self._check_strategy_names()
        if self.num_anchor_tokens < 0:
            raise InvalidConfigError(f"num_anchor_tokens must be >= 0, got {self.num_anchor_tokens}.")
        if self.num_virtual_tokens is not None and self.num_virtual_tokens < 1:
            raise InvalidConfigError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}.")
        if self.tokenizer is not None:
            self._resolve_with_tokenizer(self.tokenizer)
            self.tokenizer = None  # used once; the ids it produced are what gets saved
        if self.init == "adapter" and self.init_adapter and self.num_virtual_tokens is None:
            self.num_virtual_tokens = read_saved_prompt(self.init_adapter).shape[0]
        # Whether the init has all it needs is checked when a model is built (``check_ready``), not here: PEFT builds
        # every config class with no arguments (``PeftConfig.from_peft_type``) and fills fields in later.

    def _check_strategy_names(self) -> None:
        if self.init not in init_strategies.INITIALIZERS:
            raise UnknownInitError(f"Unknown init {self.init!r}; choose one of {sorted(init_strategies.INITIALIZERS)}.")
        if self.reparameterization not in ENCODERS:
            raise UnknownInitError(
                f"Unknown reparameterization {self.reparameterization!r}; choose one of {sorted(ENCODERS)}."
            )
        policies = init_strategies.LENGTH_POLICIES
        if self.text_length_policy is not None and self.text_length_policy not in policies:
            raise UnknownInitError(
                f"Unknown text_length_policy {self.text_length_policy!r}; choose one of {sorted(policies)}."
            )

    def _resolve_with_tokenizer(self, tokenizer: Any) -> None:
        if isinstance(tokenizer, (str, os.PathLike)):
            self.tokenizer_name_or_path = str(tokenizer)
            tokenizer = init_strategies.load_local_tokenizer(str(tokenizer))
        if self.init == "text" and self.init_token_ids is None:
            ids, self.num_virtual_tokens = init_strategies.text_token_ids(self, tokenizer)
            self.init_token_ids = ids
        if self.init == "labels" and self.label_token_ids is None:
            self.label_token_ids = init_strategies.label_token_ids(self, tokenizer)

    def check_ready(self) -> None:
        """Raise a named error unless this config carries everything its init needs; called when a model is built."""
        if self.inference_mode:
            return
        if self.init == "text" and self.init_token_ids is None:
            if not self.init_text:
                raise InvalidConfigError("init='text' needs init_text (the text whose embeddings start the prompt).")
            raise TokenizerNotAvailableError(
                "init='text' needs a tokenizer: pass tokenizer=<tokenizer object or local folder> to SoftPromptConfig."
            )
        if self.init == "labels" and self.label_token_ids is None:
            if not self.label_words:
                raise InvalidConfigError("init='labels' needs label_words, e.g. label_words=['positive', 'negative'].")
            raise TokenizerNotAvailableError(
                "init='labels' needs a tokenizer: pass tokenizer=<tokenizer or local folder> to SoftPromptConfig."
            )
        if self.init == "adapter" and not self.init_adapter:
            raise InvalidConfigError("init='adapter' needs init_adapter=<folder of a saved soft-prompt adapter>.")
        if self.num_virtual_tokens is None and self.init != "adapter":
            raise InvalidConfigError(
                "num_virtual_tokens is required (or use init='text' with text_length_policy='exact')."
            )
        if self.num_virtual_tokens is not None and self.num_anchor_tokens > self.num_virtual_tokens:
            raise InvalidConfigError(
                f"num_anchor_tokens ({self.num_anchor_tokens}) exceeds num_virtual_tokens ({self.num_virtual_tokens})."
            )

    def to_dict(self) -> dict[str, Any]:
        result = super().to_dict()
        result["tokenizer"] = None  # objects are never serialised; the ids they produced are
        result["peft_type"] = SOFT_PROMPT
        return result
