"""Manifest schema: round trip, strict typing, newer schemas refused, and fuzzing of the parser."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.errors import InvalidMetadataError, ManifestError, ManifestSchemaError
from hub.manifest import SCHEMA_VERSION, Manifest, check_metadata
from hub.versions import SemVer
from peft_ext.base_ref import BaseModelRef

# No deadlines and no too-slow health check: the machine running the suite may be busy.
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample() -> Manifest:
    return Manifest.build(
        task="coach",
        version=SemVer(1, 2, 0),
        files={"adapter_config.json": b"{}", "adapter_model.safetensors": b"xyz"},
        adapter={"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4, "token_dim": 8},
        base_model=BaseModelRef(model_id="org/base", revision="a" * 40, hidden_size=8, vocab_size=64),
        parent_version=SemVer(1, 1, 0),
        training_data_hash="sha256:abc",
        metrics={"accuracy": 0.9},
    )


BUILD: dict[str, Any] = {
    "task": "coach",
    "version": SemVer(1, 0, 0),
    "files": {"adapter_config.json": b"{}", "adapter_model.safetensors": b"xyz"},
}


def test_round_trip() -> None:
    manifest = sample()
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.to_dict()["schema_version"] == SCHEMA_VERSION
    assert set(again.libraries) >= {"peft", "transformers", "huggingface_hub", "safetensors"}


def test_newer_schema_is_refused_clearly() -> None:
    raw = sample().to_dict() | {"schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(ManifestSchemaError, match="upgrade peft-ext"):
        Manifest.from_json(json.dumps(raw))


def test_unknown_fields_of_the_same_schema_are_ignored() -> None:
    raw = sample().to_dict() | {"future_field": [1, 2]}
    assert Manifest.from_json(json.dumps(raw)) == sample().__class__.from_json(json.dumps(sample().to_dict()))


@pytest.mark.parametrize(
    "change",
    [
        {"schema_version": "1"},
        {"schema_version": 0},
        {"task": "../etc"},
        {"version": "1.2"},
        {"parent_version": 3},
        {"files": {}},
        {"files": {"../x": {"sha256": "0" * 64, "size": 1}}},
        {"files": {"a/b": {"sha256": "0" * 64, "size": 1}}},
        {"files": {"peft_ext_manifest.json": {"sha256": "0" * 64, "size": 1}}},
        {"files": {"x": {"sha256": "XYZ", "size": 1}}},
        {"files": {"x": {"sha256": "0" * 64, "size": -1}}},
        {"files": {"x": {"sha256": "0" * 64, "size": True}}},
        {"metrics": [1]},
        {"base_model": {"hidden_size": "8"}},
        {"base_model": "org/base"},
    ],
)
def test_malformed_fields_raise_manifest_error(change: dict[str, Any]) -> None:
    raw = sample().to_dict() | change
    with pytest.raises(ManifestError):
        Manifest.from_json(json.dumps(raw))


def test_1e999_is_refused_instead_of_read_as_inf() -> None:
    text = sample().to_json().decode().replace('"accuracy": 0.9', '"accuracy": 1e999')
    assert "1e999" in text
    with pytest.raises(ManifestError, match="out of range"):
        Manifest.from_json(text)


@pytest.mark.parametrize("text", [b"", b"not json", b"[]", b'{"schema_version": NaN}', b"\xff\xfe"])
def test_non_manifests_raise_manifest_error(text: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(list(sample().to_dict())), json_values, max_size=6))
def test_fuzzed_fields_raise_only_manifest_error(change: dict[str, Any]) -> None:
    raw = sample().to_dict() | change
    try:
        manifest = Manifest.from_json(json.dumps(raw))
    except ManifestError:
        return
    assert Manifest.from_json(manifest.to_json()) == manifest


# A valid manifest lists the sha256 (64 hex digits) of both adapter files, so no input of 64 bytes or fewer is one.
short_inputs = (
    st.binary(max_size=64)
    | st.text(max_size=64).map(str.encode).filter(lambda b: len(b) <= 64)  # 64 characters can be 256 UTF-8 bytes
    | st.dictionaries(st.sampled_from(list(sample().to_dict())), json_values, max_size=3)
    .map(lambda d: json.dumps(d).encode())
    .filter(lambda b: len(b) <= 64)
    | st.sampled_from([b"{}", b"[]", b"null", b'"x"', b'{"schema_version": 1}', b'{"schema_version": 99}'])
)


@FUZZ
@given(short_inputs)
def test_fuzzed_bytes_raise_only_manifest_error(data: bytes) -> None:
    assert len(data) <= 64
    with pytest.raises(ManifestError, match="peft_ext_manifest.json"):
        Manifest.from_json(data)


metric_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.tuples(st.integers()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(metric_values, st.none() | st.text(max_size=8) | st.integers() | st.binary(max_size=4))
def test_fuzzed_metadata_is_stored_whole_or_refused_by_name(metrics: Any, data_hash: Any) -> None:
    """What push checks up front and what the manifest writes agree: refused by name, or read back equal."""
    try:
        check_metadata(metrics, data_hash)
    except InvalidMetadataError:
        with pytest.raises(InvalidMetadataError):
            Manifest.build(**(BUILD | {"metrics": metrics, "training_data_hash": data_hash})).to_json()
        return
    manifest = Manifest.build(**(BUILD | {"metrics": metrics, "training_data_hash": data_hash}))
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_the_stored_file_names_are_peft_s() -> None:
    """Manifests are read without importing peft, so hub spells PEFT's file names out: they must stay PEFT's."""
    from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

    from hub.names import ADAPTER_FILES
    from peft_ext.adapter_files import ADAPTER_FILES as READ

    assert ADAPTER_FILES == READ == (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME)
