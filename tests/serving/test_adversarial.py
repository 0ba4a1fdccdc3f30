"""An adversarial corpus: hundreds of bad or edge HTTP requests, sent as raw bytes to one real server.

Every bad request gets the right 4xx (never a 5xx, never 422: validation is 400) in OpenAI's error shape; every
edge-but-valid one gets 200. After each case a valid greedy request from another client still gets exactly the
answer it gets alone, and ``GET /health`` is ok: no request, however malformed, harms the server or other clients.
The "poison" tests send requests that used to break the decoding step while streams are provably mid-generation.

Nothing here waits on the clock: timeouts only guard against a hung server.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from serving_testutils import PATIENCE_S, PROMPT_NAMES, REPO, reference, running, wait_for, words

from peft_ext.serving.server import Server
from peft_ext.serving.service import Service

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
MAX_RUNNING, MAX_QUEUED = 8, 24
CAPACITY = MAX_RUNNING + MAX_QUEUED  # generations the server can ever hold at once: more can never fit
VOCAB, CONTEXT = 64, 128  # the tiny Llama's
OK = {"model": "p0", "prompt": "hello world", "max_tokens": 4, "temperature": 0}
CHAT_OK = {"model": "p0", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0}
WITNESS = {"model": "p1", "prompt": "the coach dream", "max_tokens": 4, "temperature": 0}
JSON_TYPE = {"content-type": "application/json"}
DROP = object()  # edit(..., field=DROP) leaves the field out
BIG = 2**64  # one past the largest seed torch accepts
# Statuses: a bad value is 400, an unknown model or path 404, a wrong method 405, a body over the limit 413.
OK200, BAD, UNKNOWN, WRONG_METHOD, TOO_LARGE = {200}, {400}, {404}, {405}, {413}
NEVER_FITS = (str(CAPACITY), str(MAX_QUEUED))  # a request that can never fit names the limit


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    body: bytes | None
    expect: frozenset[int]
    headers: tuple[tuple[str, str], ...] = tuple(JSON_TYPE.items())
    chunked: bool = False  # sent without Content-Length, in pieces
    mentions: tuple[str, ...] = ()  # the error message contains one of these
    n_choices: int | None = None  # choices a 200 answer must have


CASES: list[Case] = []


def edit(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = dict(base)
    for name, value in changes.items():
        if value is DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def encode(body: Any) -> bytes:
    """A dict as JSON (lone surrogates become ``\\ud800`` escapes: valid JSON text), a str as raw JSON text."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    return json.dumps(body, allow_nan=True).encode("ascii")


def add(
    id_: str,
    body: Any,
    expect: set[int],
    *,
    path: str = COMPLETIONS,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    streamed_too: bool = True,
    chunked: bool = False,
    mentions: tuple[str, ...] = (),
    n_choices: int | None = None,
) -> None:
    """One case; a dict body for a generation route also gets a ``stream: true`` twin (refused before streaming)."""
    prefix = {COMPLETIONS: "cmpl", CHAT: "chat"}.get(path, "http")
    hdrs = tuple((JSON_TYPE if headers is None else headers).items())
    common = {"headers": hdrs, "chunked": chunked, "mentions": mentions, "n_choices": n_choices}
    raw = None if body is None else encode(body)
    CASES.append(Case(f"{prefix}-{id_}", method, path, raw, frozenset(expect), **common))  # type: ignore[arg-type]
    if streamed_too and isinstance(body, dict) and "stream" not in body and path in (COMPLETIONS, CHAT):
        streamed = encode({**body, "stream": True})
        CASES.append(Case(f"{prefix}-{id_}-stream", method, path, streamed, frozenset(expect), **common))  # type: ignore[arg-type]


def cmpl(
    id_: str, expect: set[int], n_choices: int | None = None, mentions: tuple[str, ...] = (), **changes: Any
) -> None:
    add(id_, edit(OK, **changes), expect, n_choices=n_choices, mentions=mentions)


def chat(
    id_: str, expect: set[int], n_choices: int | None = None, mentions: tuple[str, ...] = (), **changes: Any
) -> None:
    add(id_, edit(CHAT_OK, **changes), expect, path=CHAT, n_choices=n_choices, mentions=mentions)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def deep(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


OK_TEXT = json.dumps(OK)[1:-1]  # the fields of OK, to splice into raw JSON text


def ok_with(raw_fields: str) -> str:
    return "{" + OK_TEXT + ", " + raw_fields + "}"


# --- body format ----------------------------------------------------------------------------------------------------

for _id, _body, _expect in [
    ("empty-body", b"", BAD),
    ("whitespace-body", b"   \n\t ", BAD),
    ("not-json", b"hello world", BAD),
    ("truncated-brace", b"{", BAD),
    ("truncated-string", b'{"model": "p0", "prompt": "hel', BAD),
    ("truncated-after-colon", b'{"model": "p0", "prompt":', BAD),
    ("truncated-number", b'{"model": "p0", "prompt": "hi", "max_tokens": 4', BAD),
    ("trailing-comma", b'{"model": "p0", "prompt": "hi",}', BAD),
    ("single-quotes", b"{'model': 'p0', 'prompt': 'hi'}", BAD),
    ("unquoted-keys", b'{model: "p0", prompt: "hi"}', BAD),
    ("comment", b'{/* c */ "model": "p0", "prompt": "hi"}', BAD),
    ("trailing-garbage", (json.dumps(OK) + " x").encode(), BAD),
    ("two-objects", (json.dumps(OK) * 2).encode(), BAD),
    ("trailing-newline", (json.dumps(OK) + "\n\n").encode(), OK200),
    ("leading-whitespace", (" \n" + json.dumps(OK)).encode(), OK200),
    ("json-null", b"null", BAD),
    ("json-true", b"true", BAD),
    ("json-number", b"1", BAD),
    ("json-string", b'"hello"', BAD),
    ("json-empty-array", b"[]", BAD),
    ("json-array-of-valid", json.dumps([OK]).encode(), BAD),
    ("json-array-of-two", json.dumps([OK, OK]).encode(), BAD),
    ("empty-object", b"{}", BAD),
    ("nan-temperature", ok_with('"temperature": NaN').replace('"temperature": 0, ', ""), BAD),
    ("infinity-temperature", ok_with('"temperature": Infinity').replace('"temperature": 0, ', ""), BAD),
    ("minus-infinity-temperature", ok_with('"temperature": -Infinity').replace('"temperature": 0, ', ""), BAD),
    ("nan-top-p", ok_with('"top_p": NaN'), BAD),
    ("nan-max-tokens", ok_with('"max_tokens": NaN').replace('"max_tokens": 4, ', ""), BAD),
    ("infinity-max-tokens", ok_with('"max_tokens": Infinity').replace('"max_tokens": 4, ', ""), BAD),
    ("nan-seed", ok_with('"seed": NaN'), BAD),
    ("infinity-n", ok_with('"n": Infinity'), BAD),
    ("nan-presence-penalty", ok_with('"presence_penalty": NaN'), BAD),
    ("infinity-frequency-penalty", ok_with('"frequency_penalty": Infinity'), BAD),
    ("nan-logit-bias", ok_with('"logit_bias": {"5": NaN}'), BAD),
    ("nan-logprobs", ok_with('"logprobs": NaN'), BAD),
    ("nan-in-unknown-field", ok_with('"metadata": NaN'), {200, 400}),
    ("huge-float-max-tokens", ok_with('"max_tokens": 1e400').replace('"max_tokens": 4, ', ""), BAD),
    ("huge-int-max-tokens", ok_with('"max_tokens": 1' + "0" * 400).replace('"max_tokens": 4, ', ""), BAD),
    ("huge-int-n", ok_with('"n": 1' + "0" * 400), BAD),
    ("huge-float-temperature", ok_with('"temperature": 1e400').replace('"temperature": 0, ', ""), BAD),
    ("underflow-temperature-is-0", ok_with('"temperature": 1e-400').replace('"temperature": 0, ', ""), OK200),
    ("underflow-top-p-is-0", ok_with('"top_p": 1e-400'), BAD),
    ("seed-5000-digits", ok_with('"seed": ' + "1" * 5000), BAD),
    ("max-tokens-5000-digits", ok_with('"max_tokens": ' + "9" * 5000).replace('"max_tokens": 4, ', ""), BAD),
    ("max-tokens-float-literal", ok_with('"max_tokens": 4.0').replace('"max_tokens": 4, ', ""), BAD),
    ("max-tokens-exponent", ok_with('"max_tokens": 4e0').replace('"max_tokens": 4, ', ""), BAD),
    ("max-tokens-minus-zero", ok_with('"max_tokens": -0').replace('"max_tokens": 4, ', ""), BAD),
    ("deep-array-body", deep(100_000), BAD),
    ("deep-object-body", '{"a":' * 100_000 + "1" + "}" * 100_000, BAD),
    ("deep-unknown-field-100k", ok_with('"metadata": ' + deep(100_000)), BAD),
    ("deep-unknown-field-100", ok_with('"metadata": ' + deep(100)), OK200),
    ("deep-prompt", ok_with('"prompt": ' + deep(50, "5")).replace('"prompt": "hello world", ', ""), BAD),
    ("duplicate-model-last-valid", '{"model": "nope", ' + OK_TEXT + "}", {200, 400}),
    ("duplicate-model-last-unknown", "{" + OK_TEXT + ', "model": "nope"}', {400, 404}),
    ("duplicate-max-tokens-last-bad", ok_with('"max_tokens": 0'), BAD),
    ("duplicate-max-tokens-last-good", '{"max_tokens": 0, ' + OK_TEXT + "}", {200, 400}),
    ("duplicate-prompt-last-bad", ok_with('"prompt": 5'), BAD),
    ("invalid-utf8-ff", b'{"model": "p0", "prompt": "\xff\xfe", "max_tokens": 4}', BAD),
    ("invalid-utf8-latin1", b'{"model": "p0", "prompt": "caf\xe9", "max_tokens": 4}', BAD),
    ("invalid-utf8-overlong", b'{"model": "p0", "prompt": "\xc0\xaf", "max_tokens": 4}', BAD),
    ("invalid-utf8-truncated", b'{"model": "p0", "prompt": "\xe2\x82", "max_tokens": 4}', BAD),
    ("invalid-utf8-in-key", b'{"mod\xffel": "p0", "prompt": "hi", "max_tokens": 4}', BAD),
    ("utf8-encoded-surrogate", b'{"model": "p0", "prompt": "\xed\xa0\x80", "max_tokens": 4}', BAD),
    ("raw-control-char", b'{"model": "p0", "prompt": "a\x00b", "max_tokens": 4}', BAD),
    ("raw-newline-in-string", b'{"model": "p0", "prompt": "a\nb", "max_tokens": 4}', BAD),
    ("escaped-nul-in-prompt", edit(OK, prompt="hello\u0000world"), OK200),
    ("bom-utf8", b"\xef\xbb\xbf" + json.dumps(OK).encode(), {200, 400}),
    ("utf16-le-bom", json.dumps(OK).encode("utf-16"), {200, 400}),
    ("utf32", json.dumps(OK).encode("utf-32"), {200, 400}),
    ("raw-utf8-unicode-prompt", json.dumps(edit(OK, prompt="héllo 世界 🙂"), ensure_ascii=False).encode(), OK200),
]:
    add(_id, _body, _expect, streamed_too=False)

add("chat-empty-body", b"", BAD, path=CHAT)
add("chat-not-json", b"messages", BAD, path=CHAT)
add("chat-array", json.dumps([CHAT_OK]).encode(), BAD, path=CHAT)
add("chat-truncated", json.dumps(CHAT_OK).encode()[:-5], BAD, path=CHAT)
add("chat-nan-temperature", json.dumps(CHAT_OK).replace('"temperature": 0', '"temperature": NaN'), BAD, path=CHAT)
add("chat-invalid-utf8", b'{"model": "p0", "messages": [{"role": "user", "content": "\xff"}]}', BAD, path=CHAT)
add(
    "chat-utf8-surrogate", b'{"model": "p0", "messages": [{"role": "user", "content": "\xed\xb0\x80"}]}', BAD, path=CHAT
)
add("chat-deep", deep(100_000), BAD, path=CHAT)

# --- content type ---------------------------------------------------------------------------------------------------

_ok = json.dumps(OK).encode()
for _id, _headers, _body, _expect in [
    ("no-content-type", {}, _ok, {200, 400}),
    ("text-plain", {"content-type": "text/plain"}, _ok, BAD),
    (
        "form-urlencoded",
        {"content-type": "application/x-www-form-urlencoded"},
        b"model=p0&prompt=hello&max_tokens=4",
        BAD,
    ),
    ("form-urlencoded-json-body", {"content-type": "application/x-www-form-urlencoded"}, _ok, BAD),
    (
        "multipart",
        {"content-type": "multipart/form-data; boundary=XyZ"},
        b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\np0\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhello\r\n--XyZ--\r\n',
        BAD,
    ),
    ("multipart-json-body", {"content-type": "multipart/form-data; boundary=XyZ"}, _ok, BAD),
    ("xml", {"content-type": "application/xml"}, _ok, BAD),
    ("octet-stream", {"content-type": "application/octet-stream"}, _ok, BAD),
    ("json-charset", {"content-type": "application/json; charset=utf-8"}, _ok, OK200),
    ("json-uppercase", {"content-type": "APPLICATION/JSON"}, _ok, OK200),
    ("json-suffix-type", {"content-type": "application/vnd.api+json"}, _ok, {200, 400}),
    ("json-garbage-params", {"content-type": "application/json; ;;=;"}, _ok, {200, 400}),
    ("empty-content-type", {"content-type": ""}, _ok, {200, 400}),
    ("authorization-without-key-configured", {**JSON_TYPE, "authorization": "Bearer nonsense"}, _ok, OK200),
]:
    add(_id, _body, _expect, headers=_headers, streamed_too=False)
add("chat-text-plain", json.dumps(CHAT_OK).encode(), BAD, path=CHAT, headers={"content-type": "text/plain"})
add("chat-form", b"model=p0", BAD, path=CHAT, headers={"content-type": "application/x-www-form-urlencoded"})

# --- sizes: 413 -------------------------------------------------------------------------------------------------------

_huge = edit(OK, prompt="hello " * 200_000)  # 1.2 MB, over the default 1 MiB
add("body-over-limit", _huge, TOO_LARGE, streamed_too=False)
add("body-over-limit-chunked", _huge, TOO_LARGE, streamed_too=False, chunked=True)
add("body-over-limit", edit(CHAT_OK, messages=[user("hello " * 200_000)]), TOO_LARGE, path=CHAT, streamed_too=False)
add("body-over-limit-invalid-json", b"{" * 1_200_000, TOO_LARGE, streamed_too=False)

# --- /v1/completions fields -----------------------------------------------------------------------------------------

# model
for _id, _model, _expect in [
    ("model-missing", DROP, BAD),
    ("model-null", None, BAD),
    ("model-empty", "", BAD),
    ("model-int", 5, BAD),
    ("model-list", ["p0"], BAD),
    ("model-object", {"name": "p0"}, BAD),
    ("model-bool", True, BAD),
    ("model-unknown", "nope", UNKNOWN),
    ("model-wrong-case", "P0", UNKNOWN),
    ("model-base-wrong-case", "TINY", UNKNOWN),
    ("model-base", "tiny", OK200),
    ("model-space", " ", {400, 404}),
    ("model-trailing-space", "p0 ", BAD),
    ("model-trailing-newline", "p0\n", BAD),
    ("model-nul", "p0\u0000", {400, 404}),
    ("model-zero-width", "p\u200b0", {400, 404}),
    ("model-unicode", "модель", {400, 404}),
    ("model-emoji", "🙂", {400, 404}),
    ("model-lone-surrogate", "\ud800", {400, 404}),
    ("model-surrogate-suffix", "p0\udc00", {400, 404}),
    ("model-very-long", "a" * 100_000, {400, 404}),
    ("model-very-long-reference", "a" * 10_000 + ":coach", BAD),
    ("model-very-long-task", f"{REPO}:" + "a" * 65, BAD),
    ("model-very-long-constraint", f"{REPO}:coach@" + "1" * 10_000, {400, 404}),
    ("model-absolute-path", "/etc/passwd", {400, 404}),
    ("model-absolute-path-colon", "/etc/passwd:x", {400, 404}),
    ("model-home-path", "~/x:y", {400, 404}),
    ("model-dot-path", "./org/prompts:coach", {400, 404}),
    ("model-windows-path", "C:\\Windows", BAD),
    ("ref-latest-implicit", f"{REPO}:coach", OK200),
    ("ref-latest", f"{REPO}:coach@latest", OK200),
    ("ref-exact", f"{REPO}:coach@1.0.0", OK200),
    ("ref-caret", f"{REPO}:coach@^1", OK200),
    ("ref-tilde", f"{REPO}:coach@~1.0", OK200),
    ("ref-empty-constraint", f"{REPO}:coach@", {200, 400}),
    ("ref-trailing-space", f"{REPO}:coach@1.0.0 ", BAD),
    ("ref-trailing-newline", f"{REPO}:coach@1.0.0\n", BAD),
    ("ref-trailing-crlf", f"{REPO}:coach@^1\r\n", BAD),
    ("ref-leading-space", f" {REPO}:coach@1.0.0", BAD),
    ("ref-space-before-colon", f"{REPO} :coach", BAD),
    ("ref-space-in-task", f"{REPO}:co ach", BAD),
    ("ref-space-before-at", f"{REPO}:coach @1.0.0", BAD),
    ("ref-space-in-repo", "No Such Repo:coach", BAD),
    ("ref-tab-in-task", f"{REPO}:coach\t", BAD),
    ("ref-traversal-repo", "org/../prompts:coach", BAD),
    ("ref-traversal-repo-prefix", "../org/prompts:coach", {400, 404}),
    ("ref-traversal-task", f"{REPO}:../coach", BAD),
    ("ref-traversal-task-inner", f"{REPO}:coach/../other", BAD),
    ("ref-traversal-constraint", f"{REPO}:coach@../../etc/passwd", BAD),
    ("ref-backslash-traversal", "org\\..\\prompts:coach", BAD),
    ("ref-encoded-traversal", "org%2F..%2Fprompts:coach", BAD),
    ("ref-three-part-repo", "a/b/c:coach", BAD),
    ("ref-double-dash", "org/pro--mpts:coach", BAD),
    ("ref-dot-git", "org/prompts.git:coach", BAD),
    ("ref-uppercase-task", f"{REPO}:Coach", BAD),
    ("ref-unicode-task", f"{REPO}:cöach", BAD),
    ("ref-surrogate-task", f"{REPO}:\ud800", BAD),
    ("ref-surrogate-constraint", f"{REPO}:coach@\ud800", BAD),
    ("ref-empty-repo", ":coach", BAD),
    ("ref-empty-task", f"{REPO}:", BAD),
    ("ref-colon-only", ":", BAD),
    ("ref-double-colon", f"{REPO}::coach", BAD),
    ("ref-two-ats", f"{REPO}:coach@1.0.0@2", BAD),
    ("ref-bad-constraint", f"{REPO}:coach@^x", BAD),
    ("ref-bad-range", f"{REPO}:coach@>=1,<", BAD),
    ("ref-negative-version", f"{REPO}:coach@-1", BAD),
    ("ref-huge-version", f"{REPO}:coach@99999999999999999999.0.0", {400, 404}),
    ("ref-missing-task", f"{REPO}:missing@1.0.0", UNKNOWN),
    ("ref-missing-version", f"{REPO}:coach@9.0.0", UNKNOWN),
    ("ref-missing-caret", f"{REPO}:coach@^9", UNKNOWN),
    ("ref-missing-repo", "nobody/nothing:coach", UNKNOWN),
    ("ref-missing-repo-exact", "nobody/nothing:coach@1.0.0", UNKNOWN),
    ("ref-other-base-model", f"{REPO}:other@^1", BAD),
]:
    cmpl(_id, _expect, model=_model)

# prompt, in all its forms
for _id, _prompt, _expect, _n in [
    ("prompt-missing", DROP, BAD, None),
    ("prompt-null", None, BAD, None),
    ("prompt-int", 5, BAD, None),
    ("prompt-float", 5.0, BAD, None),
    ("prompt-bool", True, BAD, None),
    ("prompt-object", {"text": "hello"}, BAD, None),
    ("prompt-empty-string", "", BAD, None),
    ("prompt-whitespace", "   ", BAD, None),
    ("prompt-empty-list", [], BAD, None),
    ("prompt-list-of-empty-string", [""], BAD, None),
    ("prompt-list-with-empty-string", ["hello", ""], BAD, None),
    ("prompt-list-of-empty-list", [[]], BAD, None),
    ("prompt-lists-one-empty", [[5], []], BAD, None),
    ("prompt-mixed-str-int", [5, "a"], BAD, None),
    ("prompt-mixed-list-int", [[5], 6], BAD, None),
    ("prompt-list-null", [None], BAD, None),
    ("prompt-id-float", [5, 5.0], BAD, None),
    ("prompt-id-bool", [5, True], BAD, None),
    ("prompt-id-string", [5, "6"], BAD, None),
    ("prompt-triple-nested", [[[5]]], BAD, None),
    ("prompt-list-of-objects", [{"text": "hi"}], BAD, None),
    ("prompt-string", "hello world", OK200, 1),
    ("prompt-unicode", "héllo 世界", OK200, 1),
    ("prompt-jinja-looking", "{{ 7 * 7 }} {% for x in y %}", OK200, 1),
    ("prompt-texts", ["hello", "world"], OK200, 2),
    ("prompt-ids", [5, 6, 7], OK200, 1),
    ("prompt-id-lists", [[5, 6], [7]], OK200, 2),
    ("prompt-id-0", [0], OK200, 1),
    ("prompt-id-eos", [1], OK200, 1),
    ("prompt-id-last", [VOCAB - 1], OK200, 1),
    ("prompt-id-vocab", [VOCAB], BAD, None),
    ("prompt-id-negative", [-1], BAD, None),
    ("prompt-id-very-negative", [-(2**63) - 1], BAD, None),
    ("prompt-id-2e31", [2**31], BAD, None),
    ("prompt-id-2e63", [2**63], BAD, None),
    ("prompt-id-2e64", [2**64], BAD, None),
    ("prompt-id-1e30", [10**30], BAD, None),
    ("prompt-id-lists-one-outside", [[5], [VOCAB]], BAD, None),
    ("prompt-id-lists-negative", [[-5]], BAD, None),
    ("prompt-lone-surrogate", "\ud800", BAD, None),
    ("prompt-lone-low-surrogate", "\udc00", BAD, None),
    ("prompt-surrogate-inside", "hello \ud800 world", BAD, None),
    ("prompt-reversed-pair", "\udc00\ud800", BAD, None),
    ("prompt-texts-one-surrogate", ["hello", "\udfff"], BAD, None),
    ("prompt-surrogate-pair", "hello \U0001f642", OK200, 1),
]:
    cmpl(_id, _expect, n_choices=_n, prompt=_prompt)

# prompt and context limits (p0 has 2 virtual tokens, the store's coach 5; the context is 128)
cmpl("context-exact-fit", OK200, prompt="hello " * (CONTEXT - 3), max_tokens=1)
cmpl("context-one-over-by-max-tokens", BAD, prompt="hello " * (CONTEXT - 3), max_tokens=2)
cmpl("context-one-over-by-prompt", BAD, prompt="hello " * (CONTEXT - 2), max_tokens=1)
cmpl("context-ids-exact-fit", OK200, prompt=[5] * (CONTEXT - 3), max_tokens=1)
cmpl("context-ids-one-over", BAD, prompt=[5] * (CONTEXT - 2), max_tokens=1)
cmpl("context-base-exact-fit", OK200, model="tiny", prompt="hello " * (CONTEXT - 1), max_tokens=1)
cmpl("context-ref-exact-fit", OK200, model=f"{REPO}:coach@1.0.0", prompt="hello " * (CONTEXT - 6), max_tokens=1)
cmpl("context-ref-one-over", BAD, model=f"{REPO}:coach@1.0.0", prompt="hello " * (CONTEXT - 5), max_tokens=1)
cmpl("context-no-room-default-max-tokens", BAD, prompt="hello " * (CONTEXT - 2), max_tokens=None)
cmpl("context-prompt-longer-than-context", BAD, prompt="hello " * 1000)
cmpl("context-prompt-100k-words", BAD, prompt="hello " * 100_000)
cmpl("context-one-of-texts-too-long", BAD, prompt=["hello", "hello " * 200])
cmpl("context-id-list-2000", BAD, prompt=[5] * 2000)
cmpl("context-max-tokens-fills-context", BAD, max_tokens=CONTEXT)

# requests that can never fit in the queue: 400 naming the limit (not 429)
cmpl("fits-n-capacity", OK200, n_choices=CAPACITY, n=CAPACITY)
cmpl("fits-texts-times-n-capacity", OK200, n_choices=CAPACITY, prompt=["hello", "world"], n=CAPACITY // 2)
cmpl("never-fits-n-capacity-plus-1", BAD, mentions=NEVER_FITS, n=CAPACITY + 1)
cmpl("never-fits-n-128", BAD, mentions=NEVER_FITS, n=128)
cmpl("never-fits-3-texts-n-128", BAD, mentions=NEVER_FITS, prompt=["hello", "world", "coach"], n=128)
cmpl("never-fits-2-texts-n-17", BAD, mentions=NEVER_FITS, prompt=["hello", "world"], n=CAPACITY // 2 + 1)
cmpl("never-fits-capacity-plus-1-texts", BAD, mentions=NEVER_FITS, prompt=["hello"] * (CAPACITY + 1))
cmpl("never-fits-300-texts", BAD, mentions=NEVER_FITS, prompt=["hello world"] * 300)
cmpl("never-fits-2000-id-lists", BAD, mentions=NEVER_FITS, prompt=[[5]] * 2000)
cmpl("never-fits-300-texts-n-128", BAD, prompt=["hello world"] * 300, n=128)

# max_tokens
for _id, _value, _expect in [
    ("max-tokens-null-is-room", None, OK200),
    ("max-tokens-missing-default", DROP, OK200),
    ("max-tokens-1", 1, OK200),
    ("max-tokens-0", 0, BAD),
    ("max-tokens-negative", -1, BAD),
    ("max-tokens-float", 1.5, BAD),
    ("max-tokens-string", "4", BAD),
    ("max-tokens-bool", True, BAD),
    ("max-tokens-list", [4], BAD),
    ("max-tokens-object", {"value": 4}, BAD),
    ("max-tokens-limit", 4096, BAD),
    ("max-tokens-over-limit", 4097, BAD),
    ("max-tokens-2e31", 2**31, BAD),
    ("max-tokens-2e63", 2**63, BAD),
    ("max-tokens-2e64", BIG, BAD),
    ("max-tokens-1e100", 10**100, BAD),
    ("max-tokens-very-negative", -(2**63) - 1, BAD),
]:
    cmpl(_id, _expect, max_tokens=_value)
cmpl("max-completion-tokens-is-ignored", OK200, max_completion_tokens=0)

# temperature, top_p
for _id, _changes, _expect in [
    ("temperature-0-int", {"temperature": 0}, OK200),
    ("temperature-minus-0", {"temperature": -0.0}, OK200),
    ("temperature-1-int", {"temperature": 1, "seed": 1}, OK200),
    ("temperature-2", {"temperature": 2, "seed": 1}, OK200),
    ("temperature-null", {"temperature": None, "seed": 1}, OK200),
    ("temperature-just-over-2", {"temperature": 2.0001}, BAD),
    ("temperature-negative", {"temperature": -0.5}, BAD),
    ("temperature-string", {"temperature": "0"}, BAD),
    ("temperature-bool", {"temperature": False}, BAD),
    ("temperature-list", {"temperature": [0]}, BAD),
    ("temperature-1e-30", {"temperature": 1e-30, "seed": 1}, {200, 400}),
    ("temperature-1e-45", {"temperature": 1e-45, "seed": 1}, {200, 400}),
    ("temperature-1e-300", {"temperature": 1e-300, "seed": 1}, {200, 400}),
    ("temperature-min-subnormal", {"temperature": 5e-324, "seed": 1}, {200, 400}),
    ("top-p-1", {"top_p": 1}, OK200),
    ("top-p-half-sampled", {"top_p": 0.5, "temperature": 1, "seed": 3}, OK200),
    ("top-p-tiny-sampled", {"top_p": 1e-300, "temperature": 1, "seed": 3}, OK200),
    ("top-p-null", {"top_p": None}, OK200),
    ("top-p-0", {"top_p": 0}, BAD),
    ("top-p-negative", {"top_p": -0.1}, BAD),
    ("top-p-just-over-1", {"top_p": 1.0000001}, BAD),
    ("top-p-string", {"top_p": "1"}, BAD),
    ("top-p-bool", {"top_p": True}, BAD),
]:
    cmpl(_id, _expect, **_changes)

# n
for _id, _value, _expect, _n in [
    ("n-1", 1, OK200, 1),
    ("n-2", 2, OK200, 2),
    ("n-0", 0, BAD, None),
    ("n-negative", -1, BAD, None),
    ("n-float", 1.5, BAD, None),
    ("n-float-integral", 2.0, BAD, None),
    ("n-string", "2", BAD, None),
    ("n-bool", True, BAD, None),
    ("n-null", None, {200, 400}, None),
    ("n-129", 129, BAD, None),
    ("n-2e64", BIG, BAD, None),
]:
    cmpl(_id, _expect, n_choices=_n, n=_value)

# seed: torch accepts [-2**63, 2**64 - 1]; anything outside is refused whatever the temperature
for _id, _value, _expect in [
    ("seed-0", 0, OK200),
    ("seed-negative", -1, OK200),
    ("seed-min", -(2**63), OK200),
    ("seed-max", BIG - 1, OK200),
    ("seed-2e63", 2**63, OK200),
    ("seed-null", None, OK200),
    ("seed-2e64", BIG, BAD),
    ("seed-below-min", -(2**63) - 1, BAD),
    ("seed-2e65", 2**65, BAD),
    ("seed-1e30", 10**30, BAD),
    ("seed-minus-1e30", -(10**30), BAD),
    ("seed-1e300", 10**300, BAD),
    ("seed-float", 1.5, BAD),
    ("seed-float-integral", 1.0, BAD),
    ("seed-string", "1", BAD),
    ("seed-bool", True, BAD),
    ("seed-list", [1], BAD),
]:
    cmpl(_id, _expect, seed=_value, temperature=1)
    if _value is not None and _expect == BAD and isinstance(_value, int) and not isinstance(_value, bool):
        cmpl(f"{_id}-greedy", _expect, seed=_value, temperature=0)
cmpl("seed-max-n-2", {200, 400}, seed=BIG - 1, n=2, temperature=1)  # seeds seed, seed + 1: past the range
cmpl("seed-max-top-p", OK200, seed=BIG - 1, top_p=0.9, temperature=1)

# stop
for _id, _value, _expect in [
    ("stop-string", "world", OK200),
    ("stop-list", ["a", "b"], OK200),
    ("stop-empty-list", [], OK200),
    ("stop-null", None, OK200),
    ("stop-16", ["x"] * 16, OK200),
    ("stop-newline", "\n", OK200),
    ("stop-very-long", "x" * 10_000, OK200),
    ("stop-unicode", "世界", OK200),
    ("stop-empty-string", "", {200, 400}),
    ("stop-list-with-empty", ["", "a"], {200, 400}),
    ("stop-surrogate", "\ud800", {200, 400}),
    ("stop-17", ["x"] * 17, BAD),
    ("stop-int", 5, BAD),
    ("stop-list-int", [5], BAD),
    ("stop-list-null", [None], BAD),
    ("stop-object", {"a": 1}, BAD),
    ("stop-nested", [["a"]], BAD),
]:
    cmpl(_id, _expect, stop=_value)

# stream, stream_options
for _id, _changes, _expect in [
    ("stream-false", {"stream": False}, OK200),
    ("stream-true", {"stream": True}, OK200),
    ("stream-string", {"stream": "true"}, BAD),
    ("stream-int", {"stream": 1}, BAD),
    ("stream-null", {"stream": None}, {200, 400}),
    ("stream-options-usage", {"stream": True, "stream_options": {"include_usage": True}}, OK200),
    ("stream-options-empty", {"stream": True, "stream_options": {}}, OK200),
    ("stream-options-null", {"stream": True, "stream_options": None}, OK200),
    ("stream-options-without-stream", {"stream": False, "stream_options": {"include_usage": True}}, {200, 400}),
    ("stream-options-string", {"stream": True, "stream_options": "usage"}, BAD),
    ("stream-options-usage-string", {"stream": True, "stream_options": {"include_usage": "yes"}}, BAD),
    ("stream-options-usage-int", {"stream": True, "stream_options": {"include_usage": 1}}, BAD),
    ("stream-options-list", {"stream": True, "stream_options": [True]}, BAD),
]:
    cmpl(_id, _expect, **_changes)

# logprobs, echo, suffix, best_of, penalties, logit_bias, user, and chat-only fields
for _id, _changes, _expect in [
    ("logprobs-0", {"logprobs": 0}, OK200),
    ("logprobs-5", {"logprobs": 5}, OK200),
    ("logprobs-20", {"logprobs": 20}, OK200),
    ("logprobs-null", {"logprobs": None}, OK200),
    ("logprobs-21", {"logprobs": 21}, BAD),
    ("logprobs-negative", {"logprobs": -1}, BAD),
    ("logprobs-bool", {"logprobs": True}, BAD),
    ("logprobs-string", {"logprobs": "5"}, BAD),
    ("logprobs-2e64", {"logprobs": BIG}, BAD),
    ("top-logprobs-ignored", {"top_logprobs": 5}, OK200),
    ("echo-false", {"echo": False}, OK200),
    ("echo-true", {"echo": True}, OK200),
    ("echo-string", {"echo": "no"}, BAD),
    ("echo-null", {"echo": None}, BAD),
    ("echo-logprobs", {"echo": True, "logprobs": 3}, OK200),
    ("echo-logprobs-20-n-2", {"echo": True, "logprobs": 20, "n": 2, "temperature": 1, "seed": 5}, OK200),
    ("echo-max-tokens-0", {"echo": True, "logprobs": 1, "max_tokens": 0}, OK200),
    ("echo-max-tokens-0-no-logprobs", {"echo": True, "max_tokens": 0}, OK200),
    ("max-tokens-0-without-echo", {"max_tokens": 0}, BAD),
    ("echo-max-tokens-negative", {"echo": True, "max_tokens": -1}, BAD),
    ("echo-one-token-prompt", {"echo": True, "logprobs": 0, "prompt": [5]}, OK200),
    ("echo-token-lists", {"echo": True, "logprobs": 1, "max_tokens": 1, "prompt": [[5, 6, 7], [8]]}, OK200),
    ("echo-token-out-of-vocab", {"echo": True, "logprobs": 1, "prompt": [[5, VOCAB]]}, BAD),
    ("echo-fills-context", {"echo": True, "max_tokens": 0, "prompt": [1] * (CONTEXT - 8)}, OK200),
    ("echo-over-context", {"echo": True, "max_tokens": 0, "prompt": [1] * (CONTEXT + 1)}, BAD),
    ("suffix-empty", {"suffix": ""}, OK200),
    ("suffix-null", {"suffix": None}, OK200),
    ("suffix-text", {"suffix": "!"}, BAD),
    ("suffix-int", {"suffix": 5}, BAD),
    ("suffix-surrogate", {"suffix": "\ud800"}, BAD),
    ("best-of-equal-n", {"best_of": 1}, OK200),
    ("best-of-equal-n-2", {"best_of": 2, "n": 2}, OK200),
    ("best-of-more", {"best_of": 3}, BAD),
    ("best-of-0", {"best_of": 0}, BAD),
    ("best-of-string", {"best_of": "1"}, BAD),
    ("best-of-2e64", {"best_of": BIG}, BAD),
    ("presence-penalty-0", {"presence_penalty": 0}, OK200),
    ("presence-penalty-null", {"presence_penalty": None}, OK200),
    ("presence-penalty-set", {"presence_penalty": 0.5}, BAD),
    ("presence-penalty-negative", {"presence_penalty": -2}, BAD),
    ("presence-penalty-huge", {"presence_penalty": 1e300}, BAD),
    ("presence-penalty-string", {"presence_penalty": "0"}, BAD),
    ("frequency-penalty-0", {"frequency_penalty": 0.0}, OK200),
    ("frequency-penalty-set", {"frequency_penalty": 1}, BAD),
    ("frequency-penalty-bool", {"frequency_penalty": True}, BAD),
    ("logit-bias-empty", {"logit_bias": {}}, OK200),
    ("logit-bias-null", {"logit_bias": None}, OK200),
    ("logit-bias-set", {"logit_bias": {"5": 100}}, BAD),
    ("logit-bias-outside-vocab", {"logit_bias": {"999999": 1}}, BAD),
    ("logit-bias-string-value", {"logit_bias": {"5": "x"}}, BAD),
    ("logit-bias-list", {"logit_bias": [5]}, BAD),
    ("user-string", {"user": "someone"}, OK200),
    ("user-empty", {"user": ""}, OK200),
    ("user-null", {"user": None}, OK200),
    ("user-long", {"user": "u" * 100_000}, OK200),
    ("user-int", {"user": 5}, BAD),
    ("user-surrogate", {"user": "\ud800"}, {200, 400}),
    ("response-format-ignored", {"response_format": {"type": "json_object"}}, OK200),
    ("tools-ignored", {"tools": [{"type": "function"}]}, OK200),
    ("unknown-fields-ignored", {"metadata": {"a": [1, None]}, "future": True}, OK200),
]:
    cmpl(_id, _expect, **_changes)

# --- /v1/chat/completions fields ------------------------------------------------------------------------------------

for _id, _model, _expect in [
    ("model-missing", DROP, BAD),
    ("model-null", None, BAD),
    ("model-empty", "", BAD),
    ("model-int", 5, BAD),
    ("model-unknown", "nope", UNKNOWN),
    ("model-base", "tiny", OK200),
    ("model-very-long", "a" * 100_000, {400, 404}),
    ("model-lone-surrogate", "\ud800", {400, 404}),
    ("model-trailing-newline", "p0\n", BAD),
    ("ref-exact", f"{REPO}:coach@1.0.0", OK200),
    ("ref-trailing-newline", f"{REPO}:coach@1.0.0\n", BAD),
    ("ref-traversal-task", f"{REPO}:../coach", BAD),
    ("ref-missing-task", f"{REPO}:missing@1.0.0", UNKNOWN),
    ("ref-missing-version", f"{REPO}:coach@9.9.9", UNKNOWN),
    ("ref-bad-constraint", f"{REPO}:coach@^x", BAD),
    ("ref-other-base-model", f"{REPO}:other@^1", BAD),
]:
    chat(_id, _expect, model=_model)

for _id, _messages, _expect in [
    ("messages-missing", DROP, BAD),
    ("messages-null", None, BAD),
    ("messages-empty", [], BAD),
    ("messages-string", "hello", BAD),
    ("messages-object", {"role": "user", "content": "hello"}, BAD),
    ("messages-list-of-strings", ["hello"], BAD),
    ("messages-list-null", [None], BAD),
    ("messages-empty-message", [{}], BAD),
    ("role-missing", [{"content": "hello"}], BAD),
    ("role-null", [{"role": None, "content": "hello"}], BAD),
    ("role-unknown", [{"role": "robot", "content": "hello"}], BAD),
    ("role-uppercase", [{"role": "USER", "content": "hello"}], BAD),
    ("role-function", [{"role": "function", "content": "hello"}], BAD),
    ("role-int", [{"role": 1, "content": "hello"}], BAD),
    ("role-surrogate", [{"role": "\ud800", "content": "hello"}], BAD),
    ("role-system-only", [{"role": "system", "content": "be kind"}], OK200),
    ("role-developer", [{"role": "developer", "content": "be kind"}, user("hello")], OK200),
    ("role-tool", [{"role": "tool", "content": "42"}, user("hello")], OK200),
    ("role-assistant-last", [user("hello"), {"role": "assistant", "content": "hi"}], OK200),
    ("many-system", [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}, user("c")], OK200),
    ("content-null", [user(None)], OK200),
    ("content-missing", [{"role": "user"}], OK200),
    ("content-empty", [user("")], OK200),
    ("content-unicode", [user("héllo 世界 🙂")], OK200),
    ("content-jinja-looking", [user("{{ messages }} {% endfor %}")], OK200),
    ("content-parts", [user([{"type": "text", "text": "hello"}, {"type": "text", "text": " world"}])], OK200),
    ("content-parts-empty-list", [user([])], OK200),
    ("content-int", [user(5)], BAD),
    ("content-bool", [user(True)], BAD),
    ("content-object", [user({"type": "text", "text": "hi"})], BAD),
    ("content-list-of-strings", [user(["hello"])], BAD),
    ("content-part-no-text", [user([{"type": "text"}])], BAD),
    ("content-part-text-int", [user([{"type": "text", "text": 5}])], BAD),
    ("content-part-no-type", [user([{"text": "hi"}])], BAD),
    ("content-part-image", [user([{"type": "image_url", "image_url": {"url": "http://x"}}])], BAD),
    ("content-part-audio", [user([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}])], BAD),
    ("content-deep", [user(json.loads(deep(50, '"x"')))], BAD),
    ("content-lone-surrogate", [user("\ud800")], BAD),
    ("content-lone-low-surrogate", [user("\udfff")], BAD),
    ("content-surrogate-inside", [user("hello \ud800 world")], BAD),
    ("content-part-surrogate", [user([{"type": "text", "text": "\ud800"}])], BAD),
    ("content-system-surrogate", [{"role": "system", "content": "\udc00"}, user("hello")], BAD),
    ("content-assistant-surrogate", [user("hi"), {"role": "assistant", "content": "a\ud800"}], BAD),
    ("content-surrogate-pair", [user("hello \U0001f642")], OK200),
    ("name-string", [{"role": "user", "content": "hi", "name": "bob"}], OK200),
    ("name-int", [{"role": "user", "content": "hi", "name": 5}], BAD),
    ("name-surrogate", [{"role": "user", "content": "hi", "name": "\ud800"}], {200, 400}),
    ("tool-calls-ignored", [{"role": "assistant", "content": None, "tool_calls": []}, user("hi")], OK200),
    ("messages-too-long-for-context", [user("hello")] * 200, BAD),
    ("content-too-long-for-context", [user("hello " * 30_000)], BAD),
]:
    chat(_id, _expect, messages=_messages)

for _id, _changes, _expect in [
    ("max-tokens-null", {"max_tokens": None}, OK200),
    ("max-tokens-0", {"max_tokens": 0}, BAD),
    ("max-tokens-string", {"max_tokens": "4"}, BAD),
    ("max-tokens-2e64", {"max_tokens": BIG}, BAD),
    ("max-completion-tokens-1", {"max_tokens": DROP, "max_completion_tokens": 1}, OK200),
    ("max-completion-tokens-and-max-tokens", {"max_completion_tokens": 2}, OK200),
    ("max-completion-tokens-0", {"max_completion_tokens": 0}, BAD),
    ("max-completion-tokens-negative", {"max_completion_tokens": -1}, BAD),
    ("max-completion-tokens-float", {"max_completion_tokens": 1.5}, BAD),
    ("max-completion-tokens-string", {"max_completion_tokens": "4"}, BAD),
    ("max-completion-tokens-bool", {"max_completion_tokens": True}, BAD),
    ("max-completion-tokens-over-limit", {"max_completion_tokens": 4097}, BAD),
    ("max-completion-tokens-2e64", {"max_completion_tokens": BIG}, BAD),
    ("max-completion-tokens-over-context", {"max_completion_tokens": CONTEXT}, BAD),
    ("temperature-over-2", {"temperature": 3}, BAD),
    ("temperature-1e-300", {"temperature": 1e-300, "seed": 1}, {200, 400}),
    ("top-p-0", {"top_p": 0}, BAD),
    ("n-2", {"n": 2}, OK200),
    ("n-0", {"n": 0}, BAD),
    ("n-capacity", {"n": CAPACITY}, OK200),
    ("seed-2e64", {"seed": BIG, "temperature": 1}, BAD),
    ("seed-below-min", {"seed": -(2**63) - 1, "temperature": 1}, BAD),
    ("seed-1e30-greedy", {"seed": 10**30}, BAD),
    ("seed-max", {"seed": BIG - 1, "temperature": 1}, OK200),
    ("seed-min", {"seed": -(2**63), "temperature": 1}, OK200),
    ("stop-17", {"stop": ["x"] * 17}, BAD),
    ("stop-int", {"stop": 5}, BAD),
    ("stream-string", {"stream": "yes"}, BAD),
    ("stream-options-usage", {"stream": True, "stream_options": {"include_usage": True}}, OK200),
    ("stream-options-bad", {"stream": True, "stream_options": {"include_usage": "yes"}}, BAD),
    ("logprobs-true", {"logprobs": True}, OK200),
    ("logprobs-false", {"logprobs": False}, OK200),
    ("logprobs-string", {"logprobs": "yes"}, BAD),
    ("logprobs-int", {"logprobs": 1}, BAD),
    ("logprobs-null", {"logprobs": None}, {200, 400}),
    ("top-logprobs-0", {"logprobs": True, "top_logprobs": 0}, OK200),
    ("top-logprobs-20", {"logprobs": True, "top_logprobs": 20}, OK200),
    ("top-logprobs-21", {"logprobs": True, "top_logprobs": 21}, BAD),
    ("top-logprobs-negative", {"logprobs": True, "top_logprobs": -1}, BAD),
    ("top-logprobs-without-logprobs", {"top_logprobs": 3}, BAD),
    ("top-logprobs-string", {"logprobs": True, "top_logprobs": "3"}, BAD),
    ("echo-ignored", {"echo": True}, OK200),
    ("best-of-ignored", {"best_of": 5}, OK200),
    ("presence-penalty-set", {"presence_penalty": 1}, BAD),
    ("frequency-penalty-set", {"frequency_penalty": -1}, BAD),
    ("logit-bias-set", {"logit_bias": {"5": -100}}, BAD),
    ("logit-bias-empty", {"logit_bias": {}}, OK200),
    ("user-int", {"user": 5}, BAD),
    ("response-format-text", {"response_format": {"type": "text"}}, OK200),
    ("response-format-empty", {"response_format": {}}, OK200),
    ("response-format-null", {"response_format": None}, OK200),
    ("response-format-json-object", {"response_format": {"type": "json_object"}}, BAD),
    ("response-format-json-schema", {"response_format": {"type": "json_schema", "json_schema": {}}}, BAD),
    ("response-format-string", {"response_format": "json"}, BAD),
    ("response-format-type-int", {"response_format": {"type": 5}}, BAD),
    ("tools-empty", {"tools": []}, OK200),
    ("tools-null", {"tools": None}, OK200),
    ("tools-function", {"tools": [{"type": "function", "function": {"name": "f"}}]}, BAD),
    ("tools-string", {"tools": "f"}, BAD),
    ("tools-object", {"tools": {"type": "function"}}, BAD),
    ("tool-choice-ignored", {"tool_choice": "none"}, OK200),
]:
    chat(_id, _expect, **_changes)

chat("never-fits-n-capacity-plus-1", BAD, mentions=NEVER_FITS, n=CAPACITY + 1)
chat("never-fits-n-128", BAD, mentions=NEVER_FITS, n=128)

# --- methods and paths ----------------------------------------------------------------------------------------------

_chat_ok = json.dumps(CHAT_OK).encode()
for _id, _method, _path, _body, _expect in [
    ("get-completions", "GET", COMPLETIONS, None, WRONG_METHOD),
    ("get-chat", "GET", CHAT, None, WRONG_METHOD),
    ("put-completions", "PUT", COMPLETIONS, _ok, WRONG_METHOD),
    ("patch-completions", "PATCH", COMPLETIONS, _ok, WRONG_METHOD),
    ("delete-chat", "DELETE", CHAT, None, WRONG_METHOD),
    ("head-completions", "HEAD", COMPLETIONS, None, WRONG_METHOD),
    ("unknown-method-completions", "BREW", COMPLETIONS, _ok, {405, 501}),
    ("options-completions", "OPTIONS", COMPLETIONS, None, {200, 204, 405}),
    ("post-models", "POST", "/v1/models", _ok, WRONG_METHOD),
    ("delete-models", "DELETE", "/v1/models", None, WRONG_METHOD),
    ("post-health", "POST", "/health", _ok, WRONG_METHOD),
    ("post-metrics", "POST", "/metrics", b"", WRONG_METHOD),
    ("head-health", "HEAD", "/health", None, OK200),
    ("head-models", "HEAD", "/v1/models", None, {200, 405}),
    ("get-health-with-query", "GET", "/health?x=1", None, OK200),
    ("get-health-with-body", "GET", "/health", b"{", OK200),
    ("get-models", "GET", "/v1/models", None, OK200),
    ("get-root", "GET", "/", None, UNKNOWN),
    ("get-v1", "GET", "/v1", None, UNKNOWN),
    ("get-unknown", "GET", "/nothing", None, UNKNOWN),
    ("post-unknown-v1", "POST", "/v1/nothing", _ok, UNKNOWN),
    ("post-completion-singular", "POST", "/v1/completion", _ok, UNKNOWN),
    ("post-chat-singular", "POST", "/v1/chat/completion", _chat_ok, UNKNOWN),
    ("post-v2", "POST", "/v2/completions", _ok, UNKNOWN),
    ("post-uppercase-path", "POST", "/V1/COMPLETIONS", _ok, UNKNOWN),
    ("post-embeddings", "POST", "/v1/embeddings", b'{"model": "p0", "input": "hi"}', UNKNOWN),
    ("post-engines", "POST", "/v1/engines/p0/completions", _ok, UNKNOWN),
    ("post-double-slash", "POST", "/v1//completions", _ok, {307, 404}),
    ("post-trailing-slash", "POST", "/v1/completions/", _ok, {307, 404}),
    ("get-health-trailing-slash", "GET", "/health/", None, {307, 404}),
    ("post-encoded-slash", "POST", "/v1%2Fcompletions", _ok, {200, 404}),  # decoded before routing
    ("post-encoded-nul", "POST", "/v1/completions%00", _ok, UNKNOWN),
    ("get-encoded-traversal", "GET", "/v1/%2e%2e/%2e%2e/etc/passwd", None, UNKNOWN),
    ("get-model-by-id", "GET", "/v1/models/p0", None, {200, 404}),
    ("post-completions-query-ignored", "POST", f"{COMPLETIONS}?stream=true&model=nope", _ok, OK200),
    ("post-chat-to-completions", "POST", COMPLETIONS, _chat_ok, BAD),
    ("post-completions-to-chat", "POST", CHAT, _ok, BAD),
    ("get-tokenizer-info", "GET", "/tokenizer_info", None, OK200),
    ("post-tokenizer-info", "POST", "/tokenizer_info", _ok, WRONG_METHOD),
    ("get-tokenize", "GET", "/tokenize", None, WRONG_METHOD),
    ("tokenize-prompt", "POST", "/tokenize", b'{"prompt": "hello world"}', OK200),
    ("tokenize-no-special", "POST", "/tokenize", b'{"prompt": "hi", "add_special_tokens": false}', OK200),
    ("tokenize-model", "POST", "/tokenize", b'{"model": "p0", "prompt": "hi", "return_token_strs": true}', OK200),
    ("tokenize-unknown-model", "POST", "/tokenize", b'{"model": "nope", "prompt": "hi"}', UNKNOWN),
    ("tokenize-nothing", "POST", "/tokenize", b"{}", BAD),
    ("tokenize-both", "POST", "/tokenize", b'{"prompt": "hi", "messages": [{"role": "user", "content": "x"}]}', BAD),
    ("tokenize-chat", "POST", "/tokenize", b'{"messages": [{"role": "user", "content": "hi"}]}', OK200),
    ("tokenize-prompt-int", "POST", "/tokenize", b'{"prompt": 5}', BAD),
    ("tokenize-surrogate", "POST", "/tokenize", b'{"prompt": "\\ud800"}', BAD),
    ("tokenize-not-json", "POST", "/tokenize", b"{", BAD),
    ("detokenize", "POST", "/detokenize", b'{"tokens": [5, 6, 7]}', OK200),
    ("detokenize-empty", "POST", "/detokenize", b'{"tokens": []}', OK200),
    ("detokenize-out-of-vocab", "POST", "/detokenize", b'{"tokens": [5, 64]}', BAD),
    ("detokenize-negative", "POST", "/detokenize", b'{"tokens": [-1]}', BAD),
    ("detokenize-huge", "POST", "/detokenize", b'{"tokens": [18446744073709551616]}', BAD),
    ("detokenize-strings", "POST", "/detokenize", b'{"tokens": ["a"]}', BAD),
    ("detokenize-missing", "POST", "/detokenize", b"{}", BAD),
]:
    add(_id, _body, _expect, path=_path, method=_method, streamed_too=False)

assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"


# --- the test -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(make_service: Any) -> Iterator[Server]:
    with running(make_service(max_running=MAX_RUNNING, max_queued=MAX_QUEUED)) as server:
        yield server


@pytest.fixture(scope="module")
def witness(server: Server) -> Iterator[tuple[httpx.Client, tuple[str, str]]]:
    """Another client, and the answer its greedy request gets from the idle server (checked against the model)."""
    with httpx.Client(base_url=server.url, timeout=PATIENCE_S) as client:
        answer = client.post(COMPLETIONS, json=WITNESS)
        assert answer.status_code == 200, answer.text
        choice = answer.json()["choices"][0]
        service: Service = server.service
        ids, reason = reference(service, WITNESS["model"], service.encode_text(WITNESS["prompt"]), 4)
        assert choice["text"].split() == words(service.tokenizer, ids) and choice["finish_reason"] == reason
        yield client, (choice["text"], choice["finish_reason"])


def openai_error(response: httpx.Response) -> dict[str, Any]:
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str), body
    assert error["param"] is None or isinstance(error["param"], str), body
    assert error["code"] is None or isinstance(error["code"], str), body
    return error


def check_answer(case: Case, response: httpx.Response) -> None:
    """A 200 from a generation route: whole choices, or server-sent events ending with [DONE] and no error."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line for line in response.text.splitlines() if line]
        assert events and events[-1] == "data: [DONE]", events[-3:]
        chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
        assert all("error" not in chunk for chunk in chunks), chunks[-1]
        finished = {c["index"] for chunk in chunks for c in chunk["choices"] if c.get("finish_reason")}
        if case.n_choices is not None:
            assert finished == set(range(case.n_choices)), finished
        return
    body = response.json()
    choices = body["choices"]
    assert all(c["finish_reason"] in ("stop", "length") for c in choices), choices
    if case.n_choices is not None:
        assert sorted(c["index"] for c in choices) == list(range(case.n_choices))


def send(http: httpx.Client, case: Case) -> httpx.Response:
    content: Any = case.body
    if case.chunked and case.body is not None:
        body = case.body
        content = (body[i : i + 65536] for i in range(0, len(body), 65536))
    return http.request(case.method, case.path, content=content, headers=dict(case.headers))


def check_response(case: Case, response: httpx.Response) -> None:
    got = f"{case.method} {case.path} -> {response.status_code}: {response.text[:400]!r}"
    assert response.status_code < 500 and response.status_code != 422, got
    assert response.status_code in case.expect, f"expected {sorted(case.expect)}; {got}"
    if case.method == "HEAD":
        assert not response.content, got
    elif response.status_code >= 400:
        error = openai_error(response)
        if case.mentions:
            assert any(m in error["message"] for m in case.mentions), f"the message names no limit; {got}"
    elif response.status_code == 200 and case.path.split("?")[0] in (COMPLETIONS, CHAT):
        check_answer(case, response)


def check_unharmed(client: httpx.Client, expected: tuple[str, str]) -> None:
    """Another client's request gets the answer it gets alone, and the server is healthy."""
    answer = client.post(COMPLETIONS, json=WITNESS)
    assert answer.status_code == 200, f"{answer.status_code} {answer.text[:400]}"
    choice = answer.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == expected
    health = client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}, health.text


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_request(case: Case, server: Server, witness: tuple[httpx.Client, tuple[str, str]]) -> None:
    problems = []
    try:
        with httpx.Client(base_url=server.url, timeout=PATIENCE_S) as http:  # a connection of its own
            check_response(case, send(http, case))
    except (AssertionError, httpx.HTTPError) as error:
        problems.append(f"the request: {type(error).__name__}: {error}")
    try:
        check_unharmed(*witness)
    except (AssertionError, httpx.HTTPError) as error:
        problems.append(f"the server was harmed: {type(error).__name__}: {error}")
    assert not problems, "\n".join(problems)


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 300, len(CASES)


# --- a poison request while streams run ----------------------------------------------------------------------------


class Hold:
    """Holds the decoding thread (a listener of the public ``Service.listen``) once each of ``watched`` generations
    has had two tokens, until released: every one has then sent a token and none can have finished."""

    def __init__(self, watched: int) -> None:
        self.watched = watched
        self.counts: dict[int, int] = {}
        self.held, self.released = threading.Event(), threading.Event()

    def on_token(self, generation: Any, token: Any) -> None:
        if self.released.is_set():
            return
        self.counts[id(generation)] = self.counts.get(id(generation), 0) + 1
        if len(self.counts) == self.watched and min(self.counts.values()) >= 2:
            self.held.set()
            self.released.wait(PATIENCE_S)


STREAM_TOKENS = 40
POISONS = {  # requests that failed inside the decoding step (ending every running request); the statuses they may get
    "seed-2e64": ({"temperature": 1, "seed": BIG}, {400}),
    "seed-below-min": ({"temperature": 0.7, "seed": -(2**63) - 1}, {400}),
    "temperature-1e-300": ({"temperature": 1e-300, "seed": 1}, {200, 400}),
    "top-p-1e-300": ({"temperature": 1, "top_p": 1e-300, "seed": 1}, {200, 400}),
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_a_poison_request_leaves_running_streams_and_the_server_unharmed(make_service: Any, poison: str) -> None:
    """4 streams provably mid-generation; a request that used to break the decoding step is refused (or answered),
    the streams end with the tokens they get alone, and the server answers the next request as it would alone."""
    changes, statuses = POISONS[poison]
    poison_body = {"model": "p0", "prompt": "hello", "max_tokens": 4, **changes}
    service: Service = make_service(max_running=8, max_queued=8)
    expected: dict[tuple[str, str], list[str]] = {}
    for model in PROMPT_NAMES:  # the greedy answers alone; those that run all their tokens, the first with text
        for text in ("hello world", "the coach"):
            ids, reason = reference(service, model, service.encode_text(text), STREAM_TOKENS)
            if reason == "length" and ids[0] > 3:
                expected[(model, text)] = words(service.tokenizer, ids)
    assert len(expected) >= 4, "fewer than 4 requests run their 40 tokens on the tiny model"
    chosen = list(expected)[:4]
    hold = Hold(watched=len(chosen))
    service.listen(on_token=hold.on_token)
    with running(service) as server, httpx.Client(base_url=server.url, timeout=PATIENCE_S) as http:
        try:
            with contextlib.ExitStack() as stack:
                streams = []
                for model, text in chosen:
                    body = {"model": model, "prompt": text, "max_tokens": STREAM_TOKENS, "temperature": 0}
                    response = stack.enter_context(http.stream("POST", COMPLETIONS, json={**body, "stream": True}))
                    assert response.status_code == 200
                    streams.append(response.iter_lines())
                firsts = [next(line for line in lines if line) for lines in streams]
                assert all(first.startswith("data: ") for first in firsts), firsts
                assert hold.held.wait(PATIENCE_S), "the 4 streams never all produced tokens"

                # All 4 are running and the decoding thread is held: the poison is answered, or queued (a bug).
                answer: list[httpx.Response] = []
                poisoner = threading.Thread(target=lambda: answer.append(http.post(COMPLETIONS, json=poison_body)))
                poisoner.start()
                wait_for(
                    lambda: not poisoner.is_alive() or service.scheduler.stats().queued > 0,
                    "the poison request to be answered or queued",
                )
                hold.released.set()
                poisoner.join(PATIENCE_S)

                got = {}
                for (model, text), first, lines in zip(chosen, firsts, streams, strict=True):
                    events = [first, *(line for line in lines if line)]
                    chunks = [json.loads(event.removeprefix("data: ")) for event in events if event != "data: [DONE]"]
                    errors = [chunk["error"] for chunk in chunks if "error" in chunk]
                    text_out = "".join(c["text"] for chunk in chunks for c in chunk.get("choices", []))
                    reasons = [c["finish_reason"] for chunk in chunks for c in chunk.get("choices", [])]
                    got[(model, text)] = (text_out.split(), [r for r in reasons if r], errors, events[-1])
        finally:
            hold.released.set()
        want = {key: (tokens, ["length"], [], "data: [DONE]") for key, tokens in expected.items() if key in got}
        assert got == want, "the running streams were harmed by the poison request"
        assert answer and answer[0].status_code in statuses, answer[0].text if answer else "no answer"
        if answer[0].status_code >= 400:
            openai_error(answer[0])
        after = http.post(COMPLETIONS, json=WITNESS)
        assert after.status_code == 200, after.text
        ids, reason = reference(service, WITNESS["model"], service.encode_text(WITNESS["prompt"]), 4)
        choice = after.json()["choices"][0]
        assert (choice["text"].split(), choice["finish_reason"]) == (words(service.tokenizer, ids), reason)
        assert http.get("/health").json() == {"status": "ok"}
