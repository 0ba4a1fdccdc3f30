"""Every named exception of ``hub``.

All derive from :class:`HubError`, itself a :class:`peft_ext.errors.PeftExtError`, so ``except PeftExtError`` catches
any user-facing problem of either package. Each also derives from the built-in type a caller would expect. Messages
say what was wrong, with which value, and what to do; they never contain an access token.

An adapter that cannot be used (``InvalidAdapterError`` and its subclasses) and a base model that cannot be loaded
are failures of :mod:`peft_ext`'s reader and loader, as is a ``base_model`` that is no model, ``BaseModelRef`` or
dict form of one (the record is :mod:`peft_ext.base_ref`), so their classes live in :mod:`peft_ext.errors`; they are
re-exported here so ``from hub.errors import ...`` names every error a hub call can raise.
"""

from __future__ import annotations

from peft_ext.errors import (  # noqa: F401  (re-exported: an adapter is refused by peft_ext's one reader)
    BaseModelLoadError,
    CorruptAdapterError,
    DeepPromptNotSupportedError,
    HiddenSizeMismatchError,
    InvalidAdapterConfigError,
    InvalidAdapterError,
    InvalidBaseModelError,
    InvalidSourceError,
    KVShapeMismatchError,
    NonFiniteTensorError,
    PeftExtError,
    PickleRefusedError,
    TensorDtypeError,
    TensorShapeError,
    UnsupportedPeftTypeError,
)


class HubError(PeftExtError):
    """Base class of every error raised by hub."""


class InvalidNameError(HubError, ValueError):
    """A repo, task or file name that is unsafe as a path or a git ref."""


class InvalidVersionError(HubError, ValueError):
    """A version string that is not strict semantic versioning ``MAJOR.MINOR.PATCH``."""


class InvalidConstraintError(HubError, ValueError):
    """A version constraint that is not ``X.Y.Z``, ``^X[.Y[.Z]]``, ``~X[.Y[.Z]]`` or ``latest``."""


class NotFoundError(HubError, LookupError):
    """A repo, task or version that does not exist in the store."""


class NoMatchingVersionError(NotFoundError):
    """No (non-yanked) version satisfies a constraint."""


class VersionExistsError(HubError, ValueError):
    """The version was already pushed with other bytes: versions are immutable, push a new one."""


class InvalidMetadataError(HubError, ValueError):
    """``metrics`` or ``training_data_hash`` that cannot be stored in a manifest (wrong type, NaN/Inf, not JSON)."""


class InvalidArgumentError(HubError, ValueError):
    """An argument of a hub call out of its range or of the wrong type (``top_k``, ``timeout_s``, ``store``, ...)."""


class StoreAccessError(HubError, OSError):
    """A local store folder that cannot be used (it is a file, or cannot be read or written)."""


class InvalidEndpointError(HubError, ValueError):
    """A Hub endpoint that is not an ``http(s)://host`` URL, or that carries credentials in the URL."""


class ManifestError(HubError, ValueError):
    """A manifest that is missing, not JSON, or has fields of the wrong type."""


class ManifestSchemaError(ManifestError):
    """A manifest written by a newer hub schema than this version understands: upgrade peft-ext."""


class IntegrityError(HubError, ValueError):
    """A file whose size or sha256 differs from the manifest: the download or the store is damaged."""


class MissingFileError(IntegrityError):
    """A file the manifest lists is absent from the version's folder."""


class UnexpectedFileError(IntegrityError):
    """A version's folder holds a file its manifest does not list (e.g. a pickle dropped in beside the weights)."""


class BaseModelMismatchError(HubError, ValueError):
    """The base model given does not match the one the adapter was trained on."""


class ConcurrentUpdateError(HubError, RuntimeError):
    """Another writer kept changing the repo while pushing; retry later."""


class RemoteError(HubError, OSError):
    """The remote store refused a request or could not be reached (the message never contains the token)."""


class RemoteTimeoutError(RemoteError, TimeoutError):
    """The remote store did not answer within the configured timeout (``HfStore(timeout_s=...)``)."""
