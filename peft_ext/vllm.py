"""Serving soft prompts with vLLM through its ``prompt_embeds`` input.

vLLM dropped its prompt adapters (v0.10) but takes precomputed input embeddings: start it with
``LLM(model, enable_prompt_embeds=True)`` (server: ``--enable-prompt-embeds``) and send
``{"prompt_embeds": tensor[seq, hidden]}``. A soft prompt is served by sending ``cat([soft_prompt,
embed(token_ids)])``, which is what PEFT feeds its base model too: the prompt at positions ``0..n-1``, the text from
``n``. Nothing here imports vLLM.

vLLM tokenises nothing when given embeddings: ``token_ids`` must already hold what the tokenizer would add (BOS, a
chat template). vLLM's prefix caching matches identical embedding bytes in whole blocks, so requests sharing a soft
prompt share its cached keys/values when the prompt tensor is the same each time: :class:`VllmPrompts` reads each
prompt version once and builds every request from that one tensor, as the body of vLLM's Completions API
(``prompt_embeds``: base64 of ``torch.save`` bytes, what ``vllm.utils.serial_utils.tensor2base64`` writes).
"""

from __future__ import annotations

import base64
import io
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from peft import PeftModel

from .adapter_files import check_prompt_tensor, load_soft_prompt
from .errors import DeepPromptNotSupportedError, InvalidRequestError, UnsupportedModelError

PromptSource = torch.Tensor | str | os.PathLike[str] | PeftModel  # a [n, hidden] tensor, an adapter folder, a PeftModel
TokenIds = Sequence[int] | torch.Tensor


def _embedding_table(model_or_embeddings: Any) -> tuple[Any, torch.Tensor]:
    """The callable that embeds token ids, and its weight (for vocabulary size, dtype and device)."""
    if getattr(getattr(model_or_embeddings, "config", None), "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{type(model_or_embeddings).__name__} is an encoder-decoder model; prompt_embeds serve soft prompts on "
            "decoder-only (causal LM) models."
        )
    if isinstance(model_or_embeddings, torch.Tensor):
        matrix = model_or_embeddings
        if matrix.dim() != 2 or not matrix.is_floating_point():
            raise InvalidRequestError(
                f"An embedding matrix must be a floating-point [vocab, hidden] tensor, got {matrix.dtype} "
                f"{tuple(matrix.shape)}."
            )
        return lambda ids: torch.nn.functional.embedding(ids, matrix), matrix
    embed = model_or_embeddings
    if hasattr(model_or_embeddings, "get_input_embeddings"):  # a transformers model or a PeftModel
        embed = model_or_embeddings.get_input_embeddings()
    weight = getattr(embed, "weight", None)
    if not isinstance(embed, torch.nn.Module) or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise InvalidRequestError(
            f"Cannot embed token ids with {type(model_or_embeddings).__name__}; give the base model (or PeftModel), "
            "its input embedding module, or its [vocab, hidden] embedding matrix."
        )
    return embed, weight


def _token_tensor(token_ids: TokenIds, vocab_size: int, device: torch.device) -> torch.Tensor:
    """One request's ids as a 1-D long tensor, checked to be integers within the vocabulary."""
    try:
        ids = torch.as_tensor(token_ids) if not isinstance(token_ids, (str, bytes)) else None
    except (TypeError, ValueError, RuntimeError):  # ragged or non-numeric input
        ids = None
    if ids is not None and ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]  # [1, seq] as a tokenizer returns for one text
    if ids is not None and ids.numel() == 0:
        ids = ids.long()  # an empty list has no integer dtype of its own
    integer = ids is not None and not (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool)
    if ids is None or not integer or ids.dim() != 1:
        shown = f"{ids.dtype} {tuple(ids.shape)}" if ids is not None else repr(token_ids)[:80]
        raise InvalidRequestError(
            f"token_ids must be one request's token ids (a list of ints or a 1-D integer tensor), got {shown}; "
            "vLLM takes one [seq, hidden] tensor per request."
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise InvalidRequestError(
            f"token_ids must lie in [0, {vocab_size}) for this model's embeddings; got ids from {int(ids.min())} to "
            f"{int(ids.max())} (a tokenizer of another model?)."
        )
    return ids.to(device=device, dtype=torch.long)


@torch.no_grad()
def prompt_embeds(
    model_or_embeddings: Any,
    prompt: PromptSource,
    token_ids: TokenIds,
    *,
    adapter_name: str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The ``[n + len(token_ids), hidden]`` tensor vLLM takes as ``prompt_embeds``: the soft prompt, then the text.

    ``model_or_embeddings`` is the base model (or a PeftModel on it), its input embedding module, or its
    ``[vocab, hidden]`` embedding matrix. ``prompt`` is a ``[n, hidden]`` tensor, a saved adapter folder (SOFT_PROMPT,
    PROMPT_TUNING or P_TUNING), or a PeftModel, whose ``adapter_name`` adapter (default: the active one) is used.
    ``token_ids`` are one request's ids, special tokens included. The result has the embeddings' dtype and device
    (``dtype`` overrides: pass the dtype vLLM runs the model in) and no autograd history.
    """
    embed, weight = _embedding_table(model_or_embeddings)
    soft = _input_prompt(prompt, adapter_name)
    check_prompt_tensor(soft, weight.shape[1], "The soft prompt")
    ids = _token_tensor(token_ids, weight.shape[0], weight.device)
    text = embed(ids[None])[0]
    out_dtype = dtype if dtype is not None else text.dtype
    return torch.cat([soft.detach().to(device=text.device, dtype=out_dtype), text.to(out_dtype)]).contiguous()


def embeds_prompt(
    model_or_embeddings: Any,
    prompt: PromptSource,
    token_ids: TokenIds,
    *,
    adapter_name: str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """One vLLM request (its ``EmbedsPrompt`` dict): ``llm.generate(embeds_prompt(model, "coach", ids), params)``."""
    return {
        "prompt_embeds": prompt_embeds(model_or_embeddings, prompt, token_ids, adapter_name=adapter_name, dtype=dtype)
    }


def encode_prompt_embeds(embeds: torch.Tensor) -> str:
    """``embeds`` as vLLM's Completions API takes ``prompt_embeds``: base64 of the ``torch.save`` bytes (CPU)."""
    buffer = io.BytesIO()
    torch.save(embeds.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class VllmPrompts:
    """Requests for a vLLM server (``--enable-prompt-embeds``) that serves soft prompts on its base model.

    ``resolve`` turns what a request names into a prompt source: by default the name is the source itself (a folder,
    a tensor); with hub, ``lambda ref: hub.pull(*hub.parse_reference(ref), base_model=base)`` turns
    ``"org/prompts:coach@^1.2"`` into the verified folder of the version it picks today. Each resolved source (one
    folder per version) is read once and kept, so every request for that version starts with the same bytes and
    vLLM's prefix cache reuses the prompt's keys/values.
    """

    def __init__(
        self,
        model_or_embeddings: Any,
        resolve: Callable[[str], PromptSource] | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        self._embed, self._weight = _embedding_table(model_or_embeddings)
        self._resolve = resolve
        self._dtype = dtype if dtype is not None else self._weight.dtype
        self._tensors: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def prompt(self, name: str) -> torch.Tensor:
        """The ``[n, hidden]`` prompt ``name`` resolves to today, read once per resolved source."""
        source = self._resolve(name) if self._resolve is not None else name
        if isinstance(source, torch.Tensor):
            check_prompt_tensor(source, self._weight.shape[1], f"The soft prompt {name!r}")
            return source.detach().to(device=self._weight.device, dtype=self._dtype)
        key = os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"id:{id(source)}"
        with self._lock:
            tensor = self._tensors.get(key)
        if tensor is None:
            tensor = _input_prompt(source)
            check_prompt_tensor(tensor, self._weight.shape[1], f"The soft prompt {name!r}")
            tensor = tensor.detach().to(device=self._weight.device, dtype=self._dtype).contiguous()
            with self._lock:
                tensor = self._tensors.setdefault(key, tensor)
        return tensor

    @torch.no_grad()
    def embeds(self, name: str, token_ids: TokenIds) -> torch.Tensor:
        """The request's ``[n + len(token_ids), hidden]`` embeddings: the prompt, then the embedded text."""
        soft = self.prompt(name)
        ids = _token_tensor(token_ids, self._weight.shape[0], self._weight.device)
        text = self._embed(ids[None])[0].to(self._dtype)
        return torch.cat([soft, text]).contiguous()

    def completion_request(self, name: str, token_ids: TokenIds, *, model: str, **params: Any) -> dict[str, Any]:
        """Keyword arguments for ``openai.OpenAI(base_url=vllm_url).completions.create(**request)``: ``model`` is
        the base model vLLM serves, ``params`` the usual ones (``max_tokens``, ``temperature``, ...)."""
        embeds = encode_prompt_embeds(self.embeds(name, token_ids))
        extra_body = {**params.pop("extra_body", {}), "prompt_embeds": embeds}
        return {"model": model, "prompt": "", **params, "extra_body": extra_body}


def _input_prompt(source: Any, adapter_name: str | None = None) -> torch.Tensor:
    try:
        return load_soft_prompt(source, adapter_name)
    except DeepPromptNotSupportedError as exc:
        raise DeepPromptNotSupportedError(
            f"{exc} vLLM takes a soft prompt only as input embeddings (prompt_embeds), not as keys/values in every "
            "layer: serve deep prompts with peft-ext serve (MultiPromptModel), or train with placement='input'."
        ) from None
