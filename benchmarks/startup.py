"""What the startup hook (peft_ext_autoload.pth) costs: Python's start with it against the same start with it off.

Times ``python -c pass`` with the hook on and with ``PEFT_EXT_AUTOLOAD=0`` (the baseline), alternating, and reads
``python -X importtime`` for the modules the hook adds. Twice: with bytecode cached (a private PYTHONPYCACHEPREFIX,
as any install that may write bytecode), and as this environment runs (with PYTHONDONTWRITEBYTECODE=1 an editable
tree is compiled from source at every start). Also times ``import peft`` both ways: with the hook, importing PEFT
registers SOFT_PROMPT (peft_ext's method modules load), the price a program that uses PEFT pays for it.
Target: the hook adds <= 5 ms to a start (bytecode cached). Writes benchmarks/results/startup.json.

    python benchmarks/startup.py [--repeats 60] [--peft-repeats 7]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable

from common import alternate, figure, median, write_result

OFF = "0"
IMPORT_TIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def _env(autoload: str | None, pycache: str | None) -> dict[str, str]:
    """This environment, with the hook on (``autoload`` None) or not, and bytecode cached under ``pycache``."""
    env = {key: value for key, value in os.environ.items() if key != "PEFT_EXT_AUTOLOAD"}
    if autoload is not None:
        env["PEFT_EXT_AUTOLOAD"] = autoload
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def _run(args: list[str], autoload: str | None, cwd: str, pycache: str | None) -> subprocess.CompletedProcess[str]:
    env = _env(autoload, pycache)
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd)
    if result.returncode:
        raise SystemExit(f"{args} failed: {result.stderr}")
    return result


def _import_times(cwd: str, autoload: str | None, pycache: str | None) -> dict[str, tuple[int, int]]:
    """Module -> (self us, cumulative us) of one ``python -X importtime -c pass``."""
    times = {}
    for line in _run(["-X", "importtime", "-c", "pass"], autoload, cwd, pycache).stderr.splitlines():
        if match := IMPORT_TIME.match(line):
            times[match[4]] = (int(match[1]), int(match[2]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=60, help="alternating rounds of `python -c pass`")
    parser.add_argument("--peft-repeats", type=int, default=7, help="alternating rounds of `python -c 'import peft'`")
    args = parser.parse_args()
    load_at_start = list(os.getloadavg())

    with tempfile.TemporaryDirectory() as cwd:  # not the repo: peft_ext comes from the install, as for any program
        pycache = os.path.join(cwd, "pycache")
        modes = {"bytecode_cached": pycache, "as_is": None}
        added = set(_import_times(cwd, None, None)) - set(_import_times(cwd, OFF, None))
        if "peft_ext._registration" not in added:
            raise SystemExit("the hook did not run: is peft-ext installed in this environment (bash scripts/setup.sh)?")

        def start(autoload: str | None, folder: str | None, code: str = "pass") -> Callable[[], None]:
            def run() -> None:
                _run(["-c", code], autoload, cwd, folder)

            return run

        contenders = {
            f"{mode} {name}": start(autoload, folder)
            for mode, folder in modes.items()
            for name, autoload in (("hook", None), ("off", OFF))
        }
        seconds = alternate(contenders, args.repeats, warmup=3)
        import_us = {}
        for mode, folder in modes.items():
            samples = [_import_times(cwd, None, folder) for _ in range(max(args.repeats // 3, 5))]
            import_us[mode] = {
                module: median([float(times[module][0]) for times in samples]) for module in sorted(added)
            }
        peft_seconds = alternate(
            {"hook": start(None, pycache, "import peft"), "off": start(OFF, pycache, "import peft")}, args.peft_repeats
        )

    start_ms = {mode: {name: median(seconds[f"{mode} {name}"]) * 1e3 for name in ("hook", "off")} for mode in modes}
    for times in start_ms.values():
        times["added"] = times["hook"] - times["off"]
    imports_ms = {mode: sum(us.values()) / 1e3 for mode, us in import_us.items()}
    peft_hook_s, peft_off_s = median(peft_seconds["hook"]), median(peft_seconds["off"])
    added_ms = start_ms["bytecode_cached"]["added"]
    write_result(
        "startup",
        {
            "what": "python -c pass with the startup hook on vs PEFT_EXT_AUTOLOAD=0 (baseline), alternating; "
            "python -X importtime of the modules the hook adds; import peft both ways",
            "repeats": args.repeats,
            "peft_repeats": args.peft_repeats,
            "load_average_1_5_15_at_start": load_at_start,
            "environment_PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
            "start_ms": start_ms,
            "hook_modules_self_us": import_us,
            "import_peft_s": {"hook": peft_hook_s, "off": peft_off_s, "added": peft_hook_s - peft_off_s},
            "seconds": seconds,
            "import_peft_seconds": peft_seconds,
            "figures": [
                figure("start time added by the hook (python -c pass)", added_ms, "ms", "<= 5 ms", added_ms <= 5),
                figure("import time of the hook's modules", imports_ms["bytecode_cached"], "ms", "-", True),
                figure("python -c pass, hook off (reference)", start_ms["bytecode_cached"]["off"], "ms", "-", True),
                figure("start time added, as this environment runs", start_ms["as_is"]["added"], "ms", "-", True),
                figure("import time of the hook's modules, as it runs", imports_ms["as_is"], "ms", "-", True),
                figure("import peft added by registration (reference)", peft_hook_s - peft_off_s, "s", "-", True),
            ],
        },
    )


if __name__ == "__main__":
    main()
