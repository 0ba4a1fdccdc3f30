"""The only module that touches PEFT internals. Everything here is version-guarded and idempotent.

PEFT has no plugin mechanism for prompt methods, so registering one takes five steps:

1. add ``SOFT_PROMPT`` to the fixed ``PeftType`` enum (``register_peft_method`` refuses unknown names);
2. ``register_peft_method`` fills PEFT's config/tuner/prefix mappings, so configs load by ``peft_type``;
3. wrap ``PeftModel._setup_prompt_encoder`` (a closed if/elif over built-in types) to build our prompt module, and
   ``_check_new_adapter_config`` and ``from_pretrained`` so our adapters can load trainable (PEFT refuses that for
   prompts because it loses p-tuning encoders; ours are saved, so training resumes);
4. wrap ``PeftModel.push_to_hub`` (transformers' implementation) so a soft prompt keeps PEFT's model card;
5. wrap ``PeftModelForCausalLM.forward``/``generate`` for our adapters and for per-row ``adapter_names`` on any
   input-prompt adapter, routing both through ``peft_ext.prompting`` with correct positions and prompt KV reuse.

Each wrapper hands every other case to PEFT's original method unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import peft
import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from peft import PeftModel, PeftModelForCausalLM, PeftType, TaskType

from .config import SOFT_PROMPT, SoftPromptConfig
from .errors import (
    AdapterNotFoundError,
    HiddenSizeMismatchError,
    InvalidRequestError,
    UnsupportedModelError,
    UnsupportedPeftVersionError,
)
from .kv_cache import PromptKVCache
from .prompt_module import SoftPromptEncoder
from .prompting import forward_with_prompts, generate_with_prompts
from .sources import INPUT_PROMPT_TYPE_NAMES

TESTED_PEFT_VERSIONS = SpecifierSet(">=0.21.0,<0.22")
BASE_ADAPTER = "__base__"  # adapter name meaning "no prompt" for a row; None works too
INPUT_PROMPT_TYPES: set[Any] = set()  # filled at registration from sources.INPUT_PROMPT_TYPE_NAMES

_EXACT_GENERATE = "_peft_ext_exact_generate"  # set on a PeftModel by use_exact_generate

_registered = False


def register() -> None:
    """Register ``SOFT_PROMPT`` with PEFT. Safe to call any number of times."""
    global _registered
    if _registered:
        return
    installed = Version(peft.__version__)
    if installed not in TESTED_PEFT_VERSIONS:
        raise UnsupportedPeftVersionError(
            f"peft_ext hooks PEFT internals and is tested with peft{TESTED_PEFT_VERSIONS}, but peft {installed} is "
            f'installed. Install a tested version: pip install "peft{TESTED_PEFT_VERSIONS}".'
        )
    _add_peft_type(SOFT_PROMPT)
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if SOFT_PROMPT not in PEFT_TYPE_TO_CONFIG_MAPPING:
        peft.utils.register_peft_method(
            name=SOFT_PROMPT.lower(), config_cls=SoftPromptConfig, model_cls=SoftPromptEncoder
        )
    INPUT_PROMPT_TYPES.update(PeftType(name) for name in INPUT_PROMPT_TYPE_NAMES)
    _wrap(PeftModel, "_setup_prompt_encoder", _setup_prompt_encoder)
    _wrap(PeftModel, "_check_new_adapter_config", _check_new_adapter_config)
    _wrap_from_pretrained()
    _wrap(PeftModel, "push_to_hub", _push_to_hub)
    _wrap(PeftModelForCausalLM, "forward", _forward)
    _wrap(PeftModelForCausalLM, "generate", _generate)
    _registered = True


def _add_peft_type(name: str) -> None:
    """Add a member to the ``PeftType`` str-Enum, the way ``Enum`` builds its own members."""
    if name in PeftType.__members__:
        return
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType  # type: ignore[attr-defined]
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)


def _wrap(cls: type, name: str, replacement: Any) -> None:
    original = getattr(cls, name)
    if getattr(original, "__peft_ext_original__", None) is not None:
        return  # already wrapped

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        return replacement(original, self, *args, **kwargs)

    wrapper.__peft_ext_original__ = original  # type: ignore[attr-defined]
    setattr(cls, name, wrapper)


def is_soft_prompt(config: Any) -> bool:
    return isinstance(config, SoftPromptConfig)


# --- building the prompt module -------------------------------------------------------------------------------------


def _setup_prompt_encoder(original: Any, self: Any, adapter_name: str) -> None:
    config: Any = self.peft_config[adapter_name]
    if not is_soft_prompt(config):
        return original(self, adapter_name)
    config.check_ready()
    base = self.base_model
    if config.task_type != TaskType.CAUSAL_LM or getattr(base.config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"SoftPromptConfig supports task_type='CAUSAL_LM' on decoder-only models; got task_type="
            f"{config.task_type!r} on {type(base).__name__}."
        )
    if not hasattr(self, "prompt_encoder"):
        self.prompt_encoder = torch.nn.ModuleDict({})
        self.prompt_tokens = {}
    for parameter in base.parameters():
        parameter.requires_grad = False
    self.word_embeddings = base.get_input_embeddings()
    hidden = self.word_embeddings.weight.shape[1]
    if config.token_dim != hidden:
        raise HiddenSizeMismatchError(
            f"The adapter is {config.token_dim} wide but {type(base).__name__}'s hidden size is {hidden}: "
            "it was made for a different base model."
        )
    config.num_transformer_submodules = 1
    initialize = not getattr(config, "_weights_follow", False)
    encoder = SoftPromptEncoder(config, self.word_embeddings, initialize=initialize).to(self.device)
    self.prompt_encoder.update(torch.nn.ModuleDict({adapter_name: encoder}))
    self.prompt_tokens[adapter_name] = torch.arange(config.num_virtual_tokens).long()


def _check_new_adapter_config(original: Any, self: PeftModel, peft_config: Any, is_trainable: bool) -> None:
    # PEFT refuses trainable prompt adapters because it loses p-tuning encoders; ours are saved, so allow it.
    if is_soft_prompt(peft_config) and is_trainable:
        peft_config._weights_follow = True  # saved weights are loaded right after: skip the init
        return original(self, peft_config, is_trainable=False)
    return original(self, peft_config, is_trainable)


def _wrap_from_pretrained() -> None:
    """Let ``PeftModel.from_pretrained(..., is_trainable=True)`` resume a soft prompt, encoder included.

    PEFT refuses trainable prompt adapters in ``from_pretrained`` itself, before any hook runs, so the adapter is
    loaded for inference first and then rebuilt trainable from the same saved weights (prompt, vectors, encoder).
    """
    original = PeftModel.from_pretrained.__func__  # type: ignore[attr-defined]
    if getattr(original, "__peft_ext_original__", None) is not None:
        return

    @functools.wraps(original)
    def from_pretrained(
        cls: type, model: Any, model_id: Any, adapter_name: str = "default", is_trainable: bool = False, **kwargs: Any
    ) -> Any:
        if not is_trainable:
            return original(cls, model, model_id, adapter_name, False, **kwargs)
        peft_model = original(cls, model, model_id, adapter_name, False, **kwargs)
        config = peft_model.peft_config[adapter_name]
        if not is_soft_prompt(config):
            return original(cls, model, model_id, adapter_name, True, **kwargs)  # PEFT's own answer
        config.inference_mode = False
        config._weights_follow = True
        peft_model._setup_prompt_encoder(adapter_name)
        loading = {
            k: v for k, v in kwargs.items() if k not in ("config", "autocast_adapter_dtype", "ephemeral_gpu_offload")
        }
        peft_model.load_adapter(model_id, adapter_name, is_trainable=True, **loading)
        return peft_model

    from_pretrained.__peft_ext_original__ = original  # type: ignore[attr-defined]
    PeftModel.from_pretrained = classmethod(from_pretrained)  # type: ignore[method-assign, assignment]


def _push_to_hub(original: Any, self: Any, repo_id: str, *args: Any, **kwargs: Any) -> Any:
    """Keep PEFT's model card (``library_name: peft``, ``base_model``) when pushing soft prompts.

    PeftModel.push_to_hub is transformers' implementation, which replaces the card ``save_pretrained`` wrote with a
    ``library_name: transformers`` template when the repo has none. For our adapters the card PEFT wrote is
    uploaded instead; an existing card on the Hub is left as it is, as transformers does.
    """
    if args or not any(is_soft_prompt(config) for config in self.peft_config.values()):
        return original(self, repo_id, *args, **kwargs)
    import tempfile

    from huggingface_hub import HfApi

    revision = kwargs.get("revision")
    api = HfApi(token=kwargs.get("token"))
    repo_id = api.create_repo(repo_id, private=kwargs.get("private"), exist_ok=True).repo_id
    has_card = api.file_exists(repo_id, "README.md")  # on the main branch, as transformers checks it
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        self.save_pretrained(folder)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=kwargs.get("commit_message") or "Upload soft prompt adapter",
            commit_description=kwargs.get("commit_description"),
            revision=revision,
            create_pr=kwargs.get("create_pr", False),
            ignore_patterns=["README.md"] if has_card else None,
        )


# --- per-row prompts --------------------------------------------------------------------------------------------------


def adapter_prompt(model: Any, name: str | None) -> torch.Tensor | None:
    """The prompt ``[n, hidden]`` of one adapter of ``model`` (None for the bare base model)."""
    if name is None or name == BASE_ADAPTER:
        return None
    if name not in model.peft_config:
        raise AdapterNotFoundError(
            f"No adapter named {name!r}; loaded: {sorted(model.peft_config)} (use None or {BASE_ADAPTER!r} for none)."
        )
    config = model.peft_config[name]
    if config.peft_type not in INPUT_PROMPT_TYPES:
        raise UnsupportedModelError(
            f"Adapter {name!r} is {config.peft_type}; per-row adapters work for prompts that enter as input "
            "embeddings (SOFT_PROMPT, PROMPT_TUNING, P_TUNING)."
        )
    encoder: Any = model.prompt_encoder[name]
    if isinstance(encoder, SoftPromptEncoder):
        return encoder.prompt()
    if config.inference_mode:
        return encoder.embedding.weight
    return encoder(model.prompt_tokens[name][None].to(encoder.embedding.weight.device))[0]


def _row_adapters(model: PeftModel, adapter_names: Sequence[str | None] | None, batch: int) -> list[str | None]:
    if adapter_names is None:
        return [model.active_adapter] * batch
    if isinstance(adapter_names, str) or len(adapter_names) != batch:
        raise InvalidRequestError(f"adapter_names needs one name per row ({batch} rows), got {adapter_names!r}.")
    return list(adapter_names)


def _kv_key(model: PeftModel, name: str | None) -> Any:
    """A cache key that changes whenever the adapter's prompt can have changed; None means don't cache.

    Every in-place update of a tensor (optimizer steps, ``load_state_dict``) bumps its ``_version``, so keying on the
    identity and version of the prompt module's tensors invalidates the entry when training or reloading changes it.
    In training mode (dropout in an encoder) the prompt is not deterministic and is never cached.
    """
    if name is None or name == BASE_ADAPTER or model.training:
        return None
    encoder = model.prompt_encoder[name]
    tensors = [*encoder.parameters(), *encoder.buffers()]
    return (name, tuple((id(t), t._version) for t in tensors))


def _kv_cache(model: PeftModel) -> PromptKVCache:
    cache = model.__dict__.get("_peft_ext_kv_cache")
    if cache is None:
        cache = PromptKVCache()
        model.__dict__["_peft_ext_kv_cache"] = cache
    return cache


def _takes_over(model: PeftModel, adapter_names: Any, generating: bool = False) -> bool:
    if not model._is_prompt_learning:
        return False
    routed = generating and model.__dict__.get(_EXACT_GENERATE, False)
    return adapter_names is not None or routed or is_soft_prompt(model.active_peft_config)


def use_exact_generate(model: PeftModel, enabled: bool = True) -> PeftModel:
    """Route ``generate`` of this model's stock ``PROMPT_TUNING``/``P_TUNING`` adapters through peft_ext's path.

    Stock PEFT 0.21 prompt-tuning ``generate`` is wrong with transformers >= 5.24 (it feeds the virtual tokens again
    at every decoding step: wrong tokens on RoPE models, index errors on GPT-2/OPT); its ``forward`` is right. With
    this opt-in, ``generate`` prepends the active adapter's prompt once, as SOFT_PROMPT adapters always do, and gives
    the tokens that greedy decoding with PEFT's own ``forward`` gives. ``forward`` is left to PEFT. Returns ``model``.
    """
    if not isinstance(model, PeftModelForCausalLM):
        raise UnsupportedModelError(
            f"use_exact_generate takes a PeftModelForCausalLM (task_type='CAUSAL_LM'), got {type(model).__name__}."
        )
    for name, config in model.peft_config.items():
        if config.peft_type not in INPUT_PROMPT_TYPES:
            raise UnsupportedModelError(
                f"Adapter {name!r} is {config.peft_type}; use_exact_generate works for prompts that enter as input "
                "embeddings (SOFT_PROMPT, PROMPT_TUNING, P_TUNING)."
            )
    model.__dict__[_EXACT_GENERATE] = enabled
    return model


def _row_prompts(model: PeftModel, names: Sequence[str | None]) -> tuple[list[Any], list[Any]]:
    """Each row's prompt and KV-cache key, every distinct adapter's prompt computed once for the whole batch."""
    distinct = dict.fromkeys(names)
    prompts = {name: adapter_prompt(model, name) for name in distinct}
    keys = {name: _kv_key(model, name) for name in distinct}
    return [prompts[name] for name in names], [keys[name] for name in names]


def _forward(
    original: Any,
    self: PeftModel,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> Any:
    adapter_names = kwargs.pop("adapter_names", None)
    if not _takes_over(self, adapter_names):
        if adapter_names is not None:
            kwargs["adapter_names"] = adapter_names
        return original(self, input_ids, attention_mask, inputs_embeds, labels, **kwargs)
    kwargs.pop("task_ids", None)
    batch = input_ids.shape[0] if input_ids is not None else inputs_embeds.shape[0]  # type: ignore[union-attr]
    prompts, _ = _row_prompts(self, _row_adapters(self, adapter_names, batch))
    return forward_with_prompts(
        self.get_base_model(), prompts, input_ids, attention_mask, inputs_embeds, labels, **kwargs
    )


def _generate(original: Any, self: PeftModel, *args: Any, **kwargs: Any) -> Any:
    adapter_names = kwargs.pop("adapter_names", None)
    if self._is_prompt_learning and getattr(self, "_adapters_disabled", False):
        # Inside ``disable_adapter()`` PEFT swaps ``forward`` for the base model's; generation must follow it.
        base: Any = self.get_base_model()
        return base.generate(*args, **kwargs)
    if not _takes_over(self, adapter_names, generating=True):
        if adapter_names is not None:
            kwargs["adapter_names"] = adapter_names
        return original(self, *args, **kwargs)
    input_ids = kwargs.pop("input_ids", args[0] if args else None)
    if input_ids is None:
        raise InvalidRequestError("generate with soft prompts needs input_ids.")
    attention_mask = kwargs.pop("attention_mask", None)
    prompts, keys = _row_prompts(self, _row_adapters(self, adapter_names, input_ids.shape[0]))
    return generate_with_prompts(
        self.get_base_model(), prompts, input_ids, attention_mask, keys=keys, kv_cache=_kv_cache(self), **kwargs
    )
