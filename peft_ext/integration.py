"""The only module that touches PEFT, transformers or huggingface_hub internals. Each contact is named here and
version-guarded; everything else in peft_ext uses public APIs, or asks this module.

PEFT has no plugin mechanism for prompt methods, so installing one takes these steps (``install``):

1. add the method's member to the fixed ``PeftType`` enum (``register_peft_method`` refuses unknown names);
2. ``register_peft_method`` fills PEFT's config/tuner/prefix mappings, so configs load by ``peft_type``;
3. bind PEFT's state-dict hooks of prompt encoders (``_get_adapter_state_dict``/``_load_adapter_state_dict``) to
   the encoder's public ``tensors_to_save``/``load_tensors``;
4. wrap ``PeftModel._setup_prompt_encoder`` (a closed if/elif over built-in types) to build our prompt module, and
   ``_check_new_adapter_config`` and ``from_pretrained`` so our adapters can load trainable (PEFT refuses that for
   prompts because it loses p-tuning encoders; ours are saved, so training resumes);
5. wrap ``PeftModel.push_to_hub`` (transformers' implementation) so a soft prompt keeps PEFT's model card;
6. wrap ``PeftModelForCausalLM.forward``/``generate`` to hand our adapters, per-row ``adapter_names`` on any
   input-prompt adapter, and (opt-in) stock prompt tuning's generate to the caller's row functions.

Each wrapper hands every other case to PEFT's original method unchanged.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import peft
import torch
import transformers
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from peft import PeftModel, PeftModelForCausalLM, PeftType

from .errors import (
    AdapterNotFoundError,
    DeepPromptNotSupportedError,
    UnsupportedModelError,
    UnsupportedPeftVersionError,
)

TESTED_PEFT_VERSIONS = SpecifierSet(">=0.21.0,<0.22")
BASE_ADAPTER = "__base__"  # the adapter name meaning "no prompt" for a row; None works too
# PEFT types whose prompt enters as input embeddings: per-row adapters and peft_ext's readers work for these.
INPUT_PROMPT_TYPE_NAMES = ("SOFT_PROMPT", "PROMPT_TUNING", "P_TUNING")
# PEFT types whose prompt is keys/values in every layer (deep prompts): MultiPromptModel serves these.
DEEP_PROMPT_TYPE_NAMES = ("PREFIX_TUNING",)
_EXACT_GENERATE = "_peft_ext_exact_generate"  # set on a PeftModel by route_stock_generate


@dataclass(frozen=True)
class PromptMethod:
    """What ``install`` needs from the method: its PEFT type name, classes, and the per-row forward/generate."""

    name: str
    config_class: type
    encoder_class: type
    forward: Callable[..., Any]  # (peft_model, adapter_names, input_ids, attention_mask, inputs_embeds, labels, **kw)
    generate: Callable[..., Any]  # (peft_model, adapter_names, input_ids, attention_mask, **generate_kwargs)


_installed: PromptMethod | None = None


def install(method: PromptMethod) -> None:
    """Register ``method`` with PEFT. Safe to call any number of times."""
    global _installed
    if _installed is not None:
        return
    installed = Version(peft.__version__)
    if installed not in TESTED_PEFT_VERSIONS:
        raise UnsupportedPeftVersionError(
            f"peft_ext hooks PEFT internals and is tested with peft{TESTED_PEFT_VERSIONS}, but peft {installed} is "
            f'installed. Install a tested version: pip install "peft{TESTED_PEFT_VERSIONS}".'
        )
    _add_peft_type(method.name)
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if method.name not in PEFT_TYPE_TO_CONFIG_MAPPING:
        peft.utils.register_peft_method(
            name=method.name.lower(), config_cls=method.config_class, model_cls=method.encoder_class
        )
    _bind_state_dict_hooks(method.encoder_class)
    _installed = method
    _wrap(PeftModel, "_setup_prompt_encoder", _setup_prompt_encoder)
    _wrap(PeftModel, "_check_new_adapter_config", _check_new_adapter_config)
    _wrap_from_pretrained()
    _wrap(PeftModel, "push_to_hub", _push_to_hub)
    _wrap(PeftModelForCausalLM, "forward", _forward)
    _wrap(PeftModelForCausalLM, "generate", _generate)


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


def _bind_state_dict_hooks(encoder_class: Any) -> None:
    """PEFT (>= 0.21) saves and loads a prompt encoder's tensors through two private hooks of ``BasePromptEncoder``."""

    def get_adapter_state_dict(cls: Any, model: Any, config: Any, adapter_name: str, *_: Any, **__: Any) -> dict:
        return model.prompt_encoder[adapter_name].tensors_to_save()

    encoder_class._get_adapter_state_dict = classmethod(get_adapter_state_dict)
    encoder_class._load_adapter_state_dict = encoder_class.load_tensors


def _wrap(cls: type, name: str, replacement: Any) -> None:
    original = getattr(cls, name)
    if getattr(original, "__peft_ext_original__", None) is not None:
        return  # already wrapped

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        return replacement(original, self, *args, **kwargs)

    wrapper.__peft_ext_original__ = original  # type: ignore[attr-defined]
    setattr(cls, name, wrapper)


def _ours(config: Any) -> bool:
    return _installed is not None and isinstance(config, _installed.config_class)


def _type_name(config: Any) -> str:
    return str(getattr(config.peft_type, "value", config.peft_type))


def is_deep_prompt(config: Any) -> bool:
    """Whether an adapter's prompt is keys/values in every layer: PREFIX_TUNING, or SOFT_PROMPT placed deep."""
    return _type_name(config) in DEEP_PROMPT_TYPE_NAMES or bool(getattr(config, "is_deep", False))


def is_input_prompt(config: Any) -> bool:
    """Whether an adapter's prompt enters as input embeddings."""
    return _type_name(config) in INPUT_PROMPT_TYPE_NAMES and not is_deep_prompt(config)


def is_prompt(config: Any) -> bool:
    """Whether the engine runs this adapter as a per-row prompt (either kind)."""
    return is_input_prompt(config) or is_deep_prompt(config)


# --- building the prompt module -------------------------------------------------------------------------------------


def _setup_prompt_encoder(original: Any, self: Any, adapter_name: str) -> None:
    config: Any = self.peft_config[adapter_name]
    if not _ours(config):
        return original(self, adapter_name)
    assert _installed is not None
    base = self.base_model
    config.check_model(base)
    if not hasattr(self, "prompt_encoder"):
        self.prompt_encoder = torch.nn.ModuleDict({})
        self.prompt_tokens = {}
    for parameter in base.parameters():
        parameter.requires_grad = False
    self.word_embeddings = base.get_input_embeddings()
    config.num_transformer_submodules = 1
    initialize = not getattr(config, "_weights_follow", False)
    encoder = _installed.encoder_class(config, self.word_embeddings, initialize=initialize, model=base)
    encoder = encoder.to(self.device)
    self.prompt_encoder.update(torch.nn.ModuleDict({adapter_name: encoder}))
    self.prompt_tokens[adapter_name] = torch.arange(config.num_virtual_tokens).long()


def _check_new_adapter_config(original: Any, self: PeftModel, peft_config: Any, is_trainable: bool) -> None:
    # PEFT refuses trainable prompt adapters because it loses p-tuning encoders; ours are saved, so allow it.
    if _ours(peft_config) and is_trainable:
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
        if not _ours(config):
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
    if args or not any(_ours(config) for config in self.peft_config.values()):
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


# --- a PeftModel's adapters as prompts ------------------------------------------------------------------------------


def check_adapter(model: Any, name: str, deep: bool = True) -> None:
    """Raise a named error unless ``name`` is a prompt adapter of the PeftModel ``model`` (an input-level one
    unless ``deep``)."""
    if name not in model.peft_config:
        raise AdapterNotFoundError(f"No adapter named {name!r}; loaded: {sorted(model.peft_config)}.")
    config = model.peft_config[name]
    if not deep and is_deep_prompt(config):
        raise DeepPromptNotSupportedError(
            f"Adapter {name!r} is a deep prompt ({_type_name(config)}: keys/values in every layer); this takes "
            "prompts that enter as input embeddings."
        )
    if not is_prompt(config):
        raise UnsupportedModelError(
            f"Adapter {name!r} is {_type_name(config)}; this works for prompt adapters "
            f"({', '.join(INPUT_PROMPT_TYPE_NAMES + DEEP_PROMPT_TYPE_NAMES)})."
        )


def adapter_prompt(model: Any, name: str | None) -> torch.Tensor | None:
    """The prompt ``[n, hidden]`` of one input-prompt adapter of a ``PeftModel`` (differentiable while training);
    None for the bare base model (``None`` or ``BASE_ADAPTER``)."""
    if name is None or name == BASE_ADAPTER:
        return None
    check_adapter(model, name, deep=False)
    config = model.peft_config[name]
    encoder: Any = model.prompt_encoder[name]
    if _ours(config):
        return encoder.prompt()
    if config.inference_mode:
        return encoder.embedding.weight
    return encoder(model.prompt_tokens[name][None].to(encoder.embedding.weight.device))[0]


def adapter_deep_values(model: Any, name: str) -> tuple[torch.Tensor, int, int]:
    """A deep-prompt adapter of a ``PeftModel``: its ``[n, num_layers * 2 * heads * head_dim]`` values (for our own
    adapters differentiable while training; PREFIX_TUNING's as ``save_pretrained`` writes them, any prefix projection
    applied), its layer count and its key/value heads."""
    if name not in model.peft_config:
        raise AdapterNotFoundError(f"No adapter named {name!r}; loaded: {sorted(model.peft_config)}.")
    config = model.peft_config[name]
    if not is_deep_prompt(config):
        raise UnsupportedModelError(
            f"Adapter {name!r} is {_type_name(config)}, not a deep prompt ({', '.join(DEEP_PROMPT_TYPE_NAMES)} or "
            "SOFT_PROMPT with placement='deep')."
        )
    if _ours(config):
        return model.prompt_encoder[name].prompt(), config.num_layers, config.num_key_value_heads
    values = model.get_prompt_embedding_to_save(name)
    return values.to(model.device), config.num_layers, config.num_attention_heads


def adapter_tensors(model: Any, name: str) -> list[torch.Tensor]:
    """The tensors an adapter's prompt is computed from: a change to any of them changes the prompt."""
    encoder = model.prompt_encoder[name]
    return [*encoder.parameters(), *encoder.buffers()]


def active_adapter(model: Any) -> str:
    return model.active_adapter


def _takes_over(model: PeftModel, adapter_names: Any, generating: bool = False) -> bool:
    if not model._is_prompt_learning:
        return False
    routed = generating and model.__dict__.get(_EXACT_GENERATE, False)
    return adapter_names is not None or routed or _ours(model.active_peft_config)


def route_stock_generate(model: Any, enabled: bool) -> None:
    """Mark a PeftModel so that its stock prompt adapters (input-level or PREFIX_TUNING) generate through the
    installed method's path."""
    if not isinstance(model, PeftModelForCausalLM):
        raise UnsupportedModelError(
            f"use_exact_generate takes a PeftModelForCausalLM (task_type='CAUSAL_LM'), got {type(model).__name__}."
        )
    for name, config in model.peft_config.items():
        if not is_prompt(config):
            raise UnsupportedModelError(
                f"Adapter {name!r} is {config.peft_type}; use_exact_generate works for prompt adapters "
                f"({', '.join(INPUT_PROMPT_TYPE_NAMES + DEEP_PROMPT_TYPE_NAMES)})."
            )
    model.__dict__[_EXACT_GENERATE] = enabled


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
    assert _installed is not None
    return _installed.forward(self, adapter_names, input_ids, attention_mask, inputs_embeds, labels, **kwargs)


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
    attention_mask = kwargs.pop("attention_mask", None)
    assert _installed is not None
    return _installed.generate(self, adapter_names, input_ids, attention_mask, **kwargs)


# --- transformers -----------------------------------------------------------------------------------------------------


@functools.cache
def _cache_argument(forward: Any) -> str:
    parameters = inspect.signature(forward).parameters  # follows the deprecation wrapper's __wrapped__
    return "cache" if "cache" in parameters else "past_key_values"


def cache_argument(model: Any) -> str:
    """The keyword for a key/value cache in ``model(...)`` and ``model.generate(...)``.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name leaves ``forward`` in 5.40 and
    ``generate`` in 6.0). Read from the model's ``forward``: ``generate`` takes it through ``**kwargs``.
    """
    return _cache_argument(type(model).forward)


def activation_checkpointing(model: Any) -> bool:
    """Whether any layer of ``model`` checkpoints activations (transformers' ``gradient_checkpointing`` flag on its
    modules; read as PEFT reads it, without the deprecated ``is_gradient_checkpointing``)."""
    return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())


def output_cache(output: Any) -> Any:
    """The key/value cache a model output returned, under whichever name the installed transformers uses."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


# Stock PEFT 0.21 prompt-tuning ``generate`` feeds the virtual tokens again at every decoding step from this
# transformers release on (checked: 5.0.0, 5.12.1, 5.18.0, 5.21.1 and 5.23.0 are right, 5.24.0 is wrong).
STOCK_PROMPT_GENERATE_BROKEN_SINCE = "5.24.0"


def stock_prompt_generate_is_broken() -> bool:
    """Whether the installed transformers breaks stock PEFT prompt-tuning/p-tuning ``generate``."""
    return Version(transformers.__version__) >= Version(STOCK_PROMPT_GENERATE_BROKEN_SINCE)


def score_every_label(trainer: Any) -> None:
    """Make ``Trainer`` count every label as a target, the first one of a row included.

    A soft prompt precedes every text token, so each is predicted; Trainer's token count (the loss's divisor, summed
    over ranks under DDP) would drop each row's first label as for a plain causal LM, and the loss would then depend
    on padding, batch split and world size. Trainer keeps this choice in a private attribute (transformers 5.x).
    """
    if not hasattr(trainer, "_loss_shifts_labels"):
        raise UnsupportedModelError(
            f"transformers {transformers.__version__}'s Trainer has no _loss_shifts_labels; peft_ext's training needs "
            'a tested transformers (see pyproject.toml): pip install "transformers>=5.18,<6".'
        )
    trainer._loss_shifts_labels = False
