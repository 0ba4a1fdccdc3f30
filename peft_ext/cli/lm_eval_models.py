"""lm-evaluation-harness models for soft prompts: several prompts on one base model, evaluated in mixed batches.

:class:`PromptScorer` is lm-eval's own ``HFLM`` over a model holding the prompts (a ``PeftModel``; the bare base model
when only ``base`` is evaluated), so tokenisation, truncation, batching and the reading of log-likelihoods and
generations are lm-eval's, unchanged. Only the model calls differ: rows of several prompts share a batch, each row
with its own prompt (peft_ext's engine, through ``adapter_names``), and what is computed for the prompts not asked for
yet is kept for them. :class:`PromptLM` is the ``LM`` of one prompt that ``simple_evaluate`` runs: the first prompt's
run computes every prompt's results in one pass, the others read theirs.

- Log-likelihoods: every (context, continuation) request of a call is expanded into one row per prompt, and lm-eval's
  own ``_loglikelihood_tokens`` runs them all in one pass (batches of ``batch_size`` x prompts rows; lm-eval orders
  rows by length, so rows of several prompts share a batch where their lengths meet). A row says which prompt it is
  for by a tag before its context (a negative id, never a token); the model call strips it and hands lm-eval the
  logits of the text, as it expects from a model with virtual tokens.
- Generations: each batch lm-eval generates for is run once with every prompt (batch x prompts rows); the other
  prompts' tokens wait for their runs, which find them by the batch's exact ids and arguments.

With one prompt, every model call is the one lm-eval's ``hf`` model makes with ``peft=`` (same rows, batches and
arguments), so the results are identical; with several, each row is computed as it would be alone (peft_ext's
mixed-batch contract: log-likelihoods within float rounding, the same greedy tokens).

This overrides the methods ``HFLM`` subclasses are meant to (``_model_call``, ``_model_generate``, and
``_loglikelihood_tokens``, ``TemplateLM``'s scoring hook) and sets two of its attributes for one call
(``_max_length``, ``batch_size_per_gpu``): lm-eval is pinned below 0.5 and tested at 0.4.13 (the floor) and newest.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable, Iterator
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.models.huggingface import HFLM


def _tag(prompt: int) -> int:
    return -1 - prompt


def _prompt_of(tag: int) -> int:
    return -1 - tag


def _tensor_key(tensor: torch.Tensor | None) -> Hashable:
    if tensor is None:
        return None
    return (tuple(tensor.shape), str(tensor.dtype), tensor.detach().cpu().numpy().tobytes())


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """lm-eval warns that a model object (not a name) was given, which is the point here."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class PromptScorer(HFLM):
    """lm-eval's ``HFLM`` over ``model`` with ``adapters`` (adapter names of a ``PeftModel``; None: the bare base
    model), each request batch run for all of them at once. ``batch_size`` counts requests per prompt."""

    _max_length: int | None  # HFLM's: the model's length when set

    def __init__(self, model: Any, tokenizer: Any, adapters: list[str | None], batch_size: int = 8) -> None:
        with _quiet("lm_eval.models.huggingface"):
            super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        self.adapters = adapters
        self._peft = hasattr(model, "peft_config")
        self._base = model.get_base_model() if self._peft else model
        self._requests_per_batch = batch_size
        self._asking = 0  # the prompt whose results the current call returns
        self._scores: dict[tuple[int, tuple[int, ...], tuple[int, ...]], tuple[float, bool]] = {}
        self._generated: dict[tuple[int, Hashable], torch.Tensor] = {}

    def answer(self, prompt: int, method: str, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        """``loglikelihood``, ``loglikelihood_rolling`` or ``generate_until`` of ``requests`` for one prompt."""
        self._asking = prompt
        return getattr(super(), method)(requests, disable_tqdm=disable_tqdm)

    # --- log-likelihoods: every prompt's rows in one run of lm-eval's own scoring ---------------------------------

    def _loglikelihood_tokens(
        self, requests: list[Any], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        keys = [(tuple(context), tuple(continuation)) for _, context, continuation in requests]
        missing = [key for key in dict.fromkeys(keys) if (self._asking, *key) not in self._scores]
        if missing:
            asked = [(key, prompt) for key in missing for prompt in range(len(self.adapters))]
            rows = [(None, [_tag(prompt), *self._fit(*key)], list(key[1])) for key, prompt in asked]
            length = self._max_length
            self._max_length = self.max_length + 1  # room for the tag: never cut off
            self.batch_size_per_gpu = self._requests_per_batch * len(self.adapters)
            try:
                results = super()._loglikelihood_tokens(rows, disable_tqdm=disable_tqdm, override_bs=override_bs)
            finally:
                self._max_length, self.batch_size_per_gpu = length, self._requests_per_batch
            for (key, prompt), result in zip(asked, results, strict=True):
                self._scores[(prompt, *key)] = result
        answers = [self._scores[(self._asking, *key)] for key in keys]
        for key in set(keys):  # each prompt reads its results once
            self._scores.pop((self._asking, *key), None)
        return answers

    def _fit(self, context: tuple[int, ...], continuation: tuple[int, ...]) -> list[int]:
        """The context as lm-eval cuts it to fit the model: ``(context + continuation)[-(max_length + 1):]``."""
        assert len(continuation) <= self.max_length  # as lm-eval asserts
        return list(context[-(self.max_length + 1 - len(continuation)) :])

    def _model_call(self, inps: torch.Tensor, attn_mask: Any = None, labels: Any = None) -> torch.Tensor:
        names = [self.adapters[_prompt_of(tag)] for tag in inps[:, 0].tolist()]
        ids = inps[:, 1:]
        with torch.no_grad():
            if all(name is None for name in names):
                return self._base(ids).logits
            logits = self.model(input_ids=ids, adapter_names=names).logits
        return logits[:, -ids.shape[1] :]  # the text's columns (input-level prompts put theirs first)

    # --- generations: each batch once for every prompt ------------------------------------------------------------

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **kwargs: Any) -> torch.Tensor:
        mask = kwargs.pop("attention_mask", None)
        key = (_tensor_key(context), _tensor_key(mask), max_length, tuple(stop), repr(sorted(kwargs.items())))
        found = self._generated.pop((self._asking, key), None)
        if found is not None:
            return found
        prompts, rows = len(self.adapters), context.shape[0]
        if mask is not None:
            kwargs["attention_mask"] = mask.repeat(prompts, 1)
        if self._peft:
            kwargs["adapter_names"] = [name for name in self.adapters for _ in range(rows)]
        output = super()._model_generate(context.repeat(prompts, 1), max_length, stop, **kwargs)
        for prompt in range(prompts):
            if prompt != self._asking:
                self._generated[(prompt, key)] = output[prompt * rows : (prompt + 1) * rows]
        return output[self._asking * rows : (self._asking + 1) * rows]


class PromptLM(LM):
    """The ``LM`` of one prompt (``index`` among its scorer's ``adapters``), named ``name`` in results."""

    def __init__(self, scorer: PromptScorer, index: int, name: str) -> None:
        super().__init__()
        self.scorer, self.index, self.name = scorer, index, name

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self.scorer.answer(self.index, "loglikelihood", requests, disable_tqdm)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        return self.scorer.answer(self.index, "loglikelihood_rolling", requests, disable_tqdm)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        return self.scorer.answer(self.index, "generate_until", requests, disable_tqdm)

    @property
    def tokenizer(self) -> Any:
        return self.scorer.tokenizer

    @property
    def tokenizer_name(self) -> str:
        return self.scorer.tokenizer_name

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    @property
    def eot_token_id(self) -> int:
        return self.scorer.eot_token_id

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.scorer.apply_chat_template(chat_history, add_generation_prompt)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.scorer.chat_template(chat_template)

    def get_model_info(self) -> dict[str, Any]:
        return {"prompt": self.name}
