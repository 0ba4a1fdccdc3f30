"""PEFT's own tests as the conformance suite of the SOFT_PROMPT method: ``.venv/bin/python conformance/run.py``.

1. Takes the tests of the *installed* peft version from its source distribution (``pip download``) into a cache, with
   the PEFT test dependencies that are missing (scikit-learn, scipy) installed next to them, never into the venv.
2. Builds offline stand-ins for the tiny Hub models the tests load (``conformance/stand_ins.py``).
3. Runs ``test_decoder_models.py`` and ``test_config.py`` three times through ``conformance/plugin.py``:
   ``soft-prompt`` (SoftPromptConfig variants added beside PromptTuningConfig), and the stock prompt-learning cases
   plus ``test_config.py`` twice, with and without ``peft_ext`` imported (the control).
4. Fails (exit 1) when a SOFT_PROMPT case fails that ``conformance/not_applicable.toml`` does not list, or when
   importing peft_ext changes the outcome of a stock test. Prints a summary and writes it as JSON.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TEST_FILES = ["tests/test_decoder_models.py", "tests/test_config.py"]
# From PEFT's test extras: what these two files need (AdaMSS configs import scikit-learn, and test_config's
# test_from_peft_type builds every method's config, so without it the test stops before reaching SOFT_PROMPT).
TEST_DEPENDENCIES = ["scikit-learn"]
RUNS = {  # name -> plugin arguments
    "soft_prompt": ["--conformance", "soft-prompt"],
    "stock_with_peft_ext": ["--conformance", "stock", "--with-peft-ext"],
    "stock_bare": ["--conformance", "stock"],
}


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "peft_ext" / "conformance"


def log(message: str) -> None:
    print(f"[conformance] {message}", flush=True)


# --- preparing the cache ------------------------------------------------------------------------------------------


def extract_tests(cache: Path, peft_version: str) -> Path:
    """``<cache>/peft-<version>/tests/`` from the sdist of the installed peft; reused when present."""
    workdir = cache / f"peft-{peft_version}"
    if (workdir / "tests" / "test_decoder_models.py").is_file():
        return workdir
    sdists = cache / "sdist"
    log(f"downloading the peft {peft_version} source distribution")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        + [f"peft=={peft_version}", "-d", str(sdists)],
        check=True,
    )
    archive = next(sdists.glob(f"peft-{peft_version}.tar.gz"))
    prefix = f"peft-{peft_version}/tests/"
    with tempfile.TemporaryDirectory(dir=cache) as tmp, tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(tmp, members=members, filter="data")
        staged = Path(tmp) / f"peft-{peft_version}"
        # The tests import each other relatively (from .testing_common import ...); the sdist lacks the __init__.py.
        (staged / "tests" / "__init__.py").touch()
        # An own config file pins pytest's rootdir here, away from any project config above the cache.
        (staged / "pytest.ini").write_text("[pytest]\n")
        shutil.rmtree(workdir, ignore_errors=True)
        staged.rename(workdir)
    return workdir


def install_test_dependencies(cache: Path) -> Path:
    """PEFT's test extras these files need, resolved against the venv and installed into the cache, not the venv."""
    target = cache / "deps"
    marker = target / ".installed"
    if marker.is_file() and marker.read_text() == " ".join(TEST_DEPENDENCIES):
        return target
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    report = subprocess.run(pip + ["--dry-run", "--report", "-", *TEST_DEPENDENCIES], check=True, capture_output=True)
    missing = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in json.loads(report.stdout)["install"]]
    log(f"installing PEFT test dependencies into {target}: {' '.join(missing) or 'none missing'}")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    if missing:
        subprocess.run(pip + ["--no-deps", "--target", str(target), *missing], check=True)
    marker.write_text(" ".join(TEST_DEPENDENCIES))
    return target


def environment(cache: Path, deps: Path) -> dict[str, str]:
    env = dict(os.environ)
    hf_home = cache / "hf_home"
    paths = [str(REPO), str(deps), env.get("PYTHONPATH", "")]
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in paths if p),
        HF_HOME=str(hf_home),
        HF_HUB_CACHE=str(hf_home / "hub"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_ENDPOINT="http://127.0.0.1:9",  # should anything still try the network, it fails at once
        OMP_NUM_THREADS="1",  # tiny models: threads cost more than they give, and the runs go side by side
        TOKENIZERS_PARALLELISM="false",
        PEFT_EXT_AUTOLOAD="0",  # each run imports peft_ext itself, or not (the control): never the startup hook
    )
    return env


# --- running ------------------------------------------------------------------------------------------------------


def run_pytest(name: str, workdir: Path, out: Path, env: dict[str, str]) -> dict[str, Any]:
    report = out / f"{name}.json"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-c", "pytest.ini", "--rootdir", ".", "-p", "conformance.plugin"]
    command += ["-p", "no:cacheprovider", "-q", "-o", "addopts=", "--tb=short", "-rN"]
    command += RUNS[name] + ["--conformance-report", str(report), *TEST_FILES]
    started = time.monotonic()
    with (out / f"{name}.log").open("w") as log_file:
        code = subprocess.run(command, cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - started
    if code not in (0, 1) or not report.is_file():
        raise SystemExit(f"pytest run {name!r} exited {code} without a usable report; see {out / (name + '.log')}")
    log(f"{name}: pytest exit {code} in {seconds:.0f} s")
    return json.loads(report.read_text())


# --- judging ------------------------------------------------------------------------------------------------------


def load_not_applicable() -> list[dict[str, str]]:
    with (HERE / "not_applicable.toml").open("rb") as f:
        return list(tomllib.load(f).get("not_applicable", []))


def _test_name(nodeid: str) -> str:
    return nodeid.split("[")[0].rsplit("::", 1)[-1]


def judge_soft_prompt(result: dict[str, Any], not_applicable: list[dict[str, str]]) -> dict[str, Any]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    skip_reasons: Counter[str] = Counter()
    failures, listed, stale, deselected = [], [], [], []
    for nodeid, meta in sorted(result["meta"].items()):
        if "deselected" in meta:
            deselected.append({"id": nodeid, "reason": meta["deselected"]})
            continue
        outcome = result["outcomes"].get(nodeid, {"outcome": "not run"})
        entry = next((e for e in not_applicable if fnmatch.fnmatchcase(nodeid, e["pattern"])), None)
        architecture = meta["architecture"]
        if outcome["outcome"] in ("passed", "skipped"):
            counts[architecture][outcome["outcome"]] += 1
            if outcome["outcome"] == "skipped":  # PEFT's own skips, e.g. "Prompt learning does not support merging"
                skip_reasons[f"{_test_name(nodeid)}: {outcome.get('message', '')}"] += 1
            if entry:
                stale.append({"id": nodeid, "pattern": entry["pattern"]})
        elif entry:
            counts[architecture]["not_applicable"] += 1
            listed.append({"id": nodeid, "reason": entry["reason"]})
        else:
            counts[architecture]["failed"] += 1
            failures.append({"id": nodeid, **{k: v for k, v in outcome.items() if k != "duration"}})
    return {
        "by_architecture": {arch: dict(c) for arch, c in sorted(counts.items())},
        "failures": failures,
        "not_applicable": listed,
        "listed_but_passing": stale,
        "skip_reasons": dict(sorted(skip_reasons.items())),
        "deselected": deselected,
    }


def judge_control(with_ext: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    a, b = with_ext["outcomes"], bare["outcomes"]
    common = sorted(set(a) & set(b))
    changed = [
        {"id": i, "bare": b[i]["outcome"], "with_peft_ext": a[i]["outcome"], "message": a[i].get("message", "")}
        for i in common
        if a[i]["outcome"] != b[i]["outcome"]
    ]
    return {
        "peft_ext_imported": {"with": with_ext["peft_ext_imported"], "bare": bare["peft_ext_imported"]},
        "compared": len(common),
        "same": len(common) - len(changed),
        "changed": changed,
        "only_with_peft_ext": sorted(set(a) - set(b)),
        "only_bare": sorted(set(b) - set(a)),
        "outcomes_bare": dict(Counter(o["outcome"] for o in b.values())),
    }


def group_failures(failures: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """Failures by test function and first message line: one line each on the console (all ids are in the JSON)."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for failure in failures:
        test = _test_name(failure["id"])
        message = (failure.get("message") or "").splitlines()[0] if failure.get("message") else ""
        groups[(test, message[:160])].append(failure["id"])
    return groups


def print_summary(summary: dict[str, Any]) -> None:
    soft, control = summary["soft_prompt"], summary["control"]
    print(f"\nSOFT_PROMPT cases (peft {summary['peft_version']}), by architecture:")
    columns = ["passed", "skipped", "not_applicable", "failed"]
    print(f"  {'architecture':<14}" + "".join(f"{c:>16}" for c in columns))
    for arch, counts in soft["by_architecture"].items():
        print(f"  {arch:<14}" + "".join(f"{counts.get(c, 0):>16}" for c in columns))
    totals = Counter()
    for counts in soft["by_architecture"].values():
        totals.update(counts)
    print(f"  {'total':<14}" + "".join(f"{totals.get(c, 0):>16}" for c in columns))
    print("  skipped by PEFT's tests themselves:")
    for reason, count in soft["skip_reasons"].items():
        print(f"    {count:>4} {reason[:150]}")
    if soft["deselected"]:
        print(f"  deselected (need the Hub): {len(soft['deselected'])}")
    for (test, message), ids in group_failures(soft["failures"]).items():
        print(f"  FAILED {test} x{len(ids)}: {message}")
    for item in soft["listed_but_passing"]:
        print(f"  note: listed as not applicable but passes or skips: {item['id']}")
    print(
        f"\nControl (stock cases, with vs without peft_ext imported): {control['compared']} compared, "
        f"{control['same']} same, {len(control['changed'])} changed; "
        f"{len(control['only_with_peft_ext'])} only with peft_ext, {len(control['only_bare'])} only without"
    )
    for change in control["changed"]:
        print(f"  CHANGED {change['id']}: {change['bare']} -> {change['with_peft_ext']}")
        if change["message"]:
            print(f"      {change['message'].splitlines()[0]}")
    for nodeid in control["only_with_peft_ext"]:
        print(f"  new with peft_ext: {nodeid}")
    verdict = "OK" if summary["ok"] else "FAILED"
    print(f"\nconformance {verdict} in {summary['runtime_s']:.0f} s; summary: {summary['json']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=default_cache(), help="default: %(default)s")
    parser.add_argument("--output", type=Path, default=REPO / "peft-ext-output" / "conformance")
    parser.add_argument("--jobs", type=int, default=2, help="pytest runs side by side (default: %(default)s)")
    args = parser.parse_args()
    started = time.monotonic()
    peft_version = version("peft")
    cache: Path = args.cache_dir.resolve()
    out: Path = args.output.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    workdir = extract_tests(cache, peft_version)
    deps = install_test_dependencies(cache)
    env = environment(cache, deps)
    subprocess.run([sys.executable, "-m", "conformance.stand_ins", env["HF_HUB_CACHE"]], env=env, check=True)
    log(f"running PEFT {peft_version}'s tests from {workdir} ({args.jobs} side by side; logs in {out})")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {name: pool.submit(run_pytest, name, workdir, out, env) for name in RUNS}
        results = {name: future.result() for name, future in futures.items()}

    soft = judge_soft_prompt(results["soft_prompt"], load_not_applicable())
    control = judge_control(results["stock_with_peft_ext"], results["stock_bare"])
    peft_ext_as_intended = control["peft_ext_imported"] == {"with": True, "bare": False}
    summary = {
        "peft_version": peft_version,
        "json": str(out / "summary.json"),
        "runtime_s": round(time.monotonic() - started, 1),
        "ok": not soft["failures"] and not control["changed"] and peft_ext_as_intended,
        "soft_prompt": soft,
        "control": control,
        "soft_prompt_outcomes": results["soft_prompt"]["outcomes"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    if not peft_ext_as_intended:
        print(f"control invalid: peft_ext imported {control['peft_ext_imported']}, expected with=True, bare=False")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
