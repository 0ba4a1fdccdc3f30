"""Installing peft-ext is enough for PEFT to load SOFT_PROMPT adapters: the startup hook ``peft_ext_autoload.pth``.

Each case runs a fresh interpreter of this environment (scripts/setup.sh installs peft-ext into it, editable, hook
included), whose program never imports peft_ext, as lm-eval, TRL or ``AutoPeftModelForCausalLM`` users do not;
``PEFT_EXT_AUTOLOAD=0`` turning the hook off proves the hook is what makes it work. The wheel and the sdist are built
from a copy of the tree and checked to carry the hook.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import make_model
from transformers import AutoModelForCausalLM

from peft_ext import SoftPromptConfig

ROOT = Path(__file__).resolve().parent.parent
HOOK = "peft_ext_autoload.pth"
IDS = [[5, 6, 7, 8, 9]]
# What building peft-ext reads from the tree (pyproject.toml names README.md as the long description).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", HOOK, "peft_ext", "hub")
# The only modules the hook may add to a Python start.
HOOK_MODULES = {"peft_ext", "peft_ext._registration", "peft_ext._autoload"}
HEAVY = ("torch", "peft", "transformers", "typing", "threading", "importlib.abc", "peft_ext.errors")

# The program under test: it loads a saved SOFT_PROMPT adapter with PEFT alone and saves the logits.
LOAD_WITH_PEFT = f"""
import sys
import torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM

base, adapter, out, how = sys.argv[1:]
if how == "PeftModel":
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
else:
    model = AutoPeftModelForCausalLM.from_pretrained(adapter)  # the base from adapter_config.json, a local folder
with torch.no_grad():
    torch.save(model.eval()(input_ids=torch.tensor({IDS})).logits, out)
print(type(model.peft_config["default"]).__name__)
"""
# Which modules a start loaded, as JSON.
MODULES = "import json, sys; print(json.dumps(sorted(sys.modules)))"


def _python(
    *args: str, cwd: Path, autoload: str | None = None, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run this environment's Python offline in ``cwd`` (never the repo: its peft_ext must come from the install)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PEFT_EXT_AUTOLOAD", "PYTHONPATH")}
    env["HF_HUB_OFFLINE"] = "1"
    if autoload is not None:
        env["PEFT_EXT_AUTOLOAD"] = autoload
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def _modules(cwd: Path, autoload: str | None = None) -> set[str]:
    result = _python("-c", MODULES, cwd=cwd, autoload=autoload)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


@pytest.fixture(scope="module", autouse=True)
def _hook_is_installed() -> None:
    folders = [*site.getsitepackages(), sysconfig.get_path("purelib")]
    assert any((Path(folder) / HOOK).is_file() for folder in folders), (
        f"{HOOK} is not in this environment's site-packages ({folders}): reinstall peft-ext (bash scripts/setup.sh)"
    )


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.Tensor]:
    """A tiny Llama saved to a folder, a SOFT_PROMPT adapter on it (base_model_name_or_path: that folder), and the
    adapter's logits loaded in this process, where peft_ext is imported."""
    folder = tmp_path_factory.mktemp("autoload")
    base_dir, adapter_dir = folder / "base", folder / "adapter"
    make_model("llama").save_pretrained(base_dir)
    config = SoftPromptConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, init="vocab", init_seed=0, reparameterization="mlp"
    )
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config).save_pretrained(adapter_dir)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(IDS)).logits
        assert not torch.allclose(logits[:, -len(IDS[0]) :], base(input_ids=torch.tensor(IDS)).logits)  # it prompts
    return base_dir, adapter_dir, logits


@pytest.mark.parametrize("how", ["PeftModel", "AutoPeftModelForCausalLM"])
def test_peft_alone_loads_a_soft_prompt_adapter(saved_adapter, how, tmp_path):
    base_dir, adapter_dir, expected = saved_adapter
    out = tmp_path / "logits.pt"
    result = _python("-c", LOAD_WITH_PEFT, str(base_dir), str(adapter_dir), str(out), how, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SoftPromptConfig"]
    torch.testing.assert_close(torch.load(out), expected, atol=0, rtol=0)


def test_without_the_hook_peft_does_not_know_soft_prompt(saved_adapter, tmp_path):
    base_dir, adapter_dir, _ = saved_adapter
    out = tmp_path / "logits.pt"
    args = ("-c", LOAD_WITH_PEFT, str(base_dir), str(adapter_dir), str(out), "PeftModel")
    result = _python(*args, cwd=tmp_path, autoload="0")
    assert result.returncode != 0
    assert "KeyError: 'SOFT_PROMPT'" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "false", "No", "OFF", " off "])
def test_the_variable_turns_the_hook_off(value, tmp_path):
    assert not any(module.startswith("peft_ext") for module in _modules(tmp_path, autoload=value))


@pytest.mark.parametrize("value", [None, "", "1", "yes", "on"])
def test_the_hook_runs_unless_turned_off(value, tmp_path):
    assert "peft_ext._registration" in _modules(tmp_path, autoload=value)


def test_the_hook_loads_nothing_heavy(tmp_path):
    with_hook, without = _modules(tmp_path), _modules(tmp_path, autoload="0")
    assert HOOK_MODULES <= with_hook
    assert with_hook - without <= HOOK_MODULES
    assert not with_hook & set(HEAVY)


@pytest.mark.parametrize("first", ["import peft_ext\nimport peft", "import peft\nimport peft_ext"])
def test_with_the_hook_off_importing_peft_ext_still_registers(first, tmp_path):
    code = f"{first}\nfrom peft import PeftType\nprint(PeftType('SOFT_PROMPT').value)"
    result = _python("-c", code, cwd=tmp_path, autoload="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SOFT_PROMPT"


@pytest.fixture
def untested_peft(tmp_path: Path) -> Path:
    """A folder whose ``peft`` is not one peft_ext can register with (put first on PYTHONPATH)."""
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "__init__.py").write_text('__version__ = "0.30.0"\n')
    return tmp_path


def test_a_failed_registration_does_not_break_a_program_that_only_imports_peft(untested_peft, tmp_path):
    result = _python("-c", "import peft\nprint(peft.__version__)", cwd=tmp_path, pythonpath=untested_peft)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.30.0"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("peft-ext: SOFT_PROMPT is not registered with PEFT ("), lines


def test_a_failed_registration_still_raises_where_peft_ext_is_imported(untested_peft, tmp_path):
    result = _python("-c", "import peft_ext\nimport peft", cwd=tmp_path, autoload="0", pythonpath=untested_peft)
    assert result.returncode != 0
    assert "ImportError" in result.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A copy of the tree's build inputs, with the sdist and the wheel built from it (offline, this environment's
    setuptools), and the wheel installed into a folder of its own."""
    folder = tmp_path_factory.mktemp("build")
    tree, dist, target = folder / "tree", folder / "dist", folder / "target"
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(source, tree / name)
    # Offline, and as an isolated build would be: setuptools with its own vendored dependencies first (this
    # environment's may be too old for it: the lowest-versions one has packaging 23, PEP 639 licenses need 24.2).
    setuptools = importlib.util.find_spec("setuptools")
    assert setuptools is not None and setuptools.submodule_search_locations
    vendored = Path(setuptools.submodule_search_locations[0]) / "_vendor"
    offline = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": str(vendored)}
    env = {**os.environ, **offline}
    sdist = "import sys; from setuptools.build_meta import build_sdist; print(build_sdist(sys.argv[1]))"
    for command in (
        [sys.executable, "-c", sdist, str(dist)],
        [sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation", "-w", str(dist)],
    ):
        result = subprocess.run(command, capture_output=True, text=True, cwd=tree, env=env, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = dist.glob("*.whl")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)]
    result = subprocess.run(install, capture_output=True, text=True, cwd=folder, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (sdist_file,) = dist.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist_file, "target": target}


def test_the_wheel_carries_the_hook_at_its_root(built):
    with zipfile.ZipFile(built["wheel"]) as wheel:
        assert wheel.read(HOOK) == (ROOT / HOOK).read_bytes()
        assert [name for name in wheel.namelist() if name.endswith(".pth")] == [HOOK]
        (record,) = [name for name in wheel.namelist() if name.endswith(".dist-info/RECORD")]
        assert any(line.startswith(f"{HOOK},") for line in wheel.read(record).decode().splitlines())  # uninstalled


def test_the_sdist_carries_the_hook(built):
    with tarfile.open(built["sdist"]) as sdist:
        assert any(name.endswith(f"/{HOOK}") and name.count("/") == 1 for name in sdist.getnames())


# A start without site, then the install folder added as a site folder: its .pth files run as in site-packages.
FROM_TARGET = (
    "import json, site, sys; site.addsitedir(sys.argv[1]); import peft_ext; "
    "print(json.dumps({'modules': sorted(sys.modules), 'peft_ext': peft_ext.__file__}))"
)


def test_the_installed_wheel_runs_the_hook(built, tmp_path):
    target = built["target"]
    assert (target / HOOK).is_file()
    result = _python("-S", "-c", FROM_TARGET, str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert Path(report["peft_ext"]).is_relative_to(target)
    assert HOOK_MODULES <= set(report["modules"])
    assert not set(report["modules"]) & set(HEAVY)

    result = _python("-S", "-c", FROM_TARGET, str(target), cwd=tmp_path, autoload="off")
    assert result.returncode == 0, result.stderr
    assert "peft_ext._autoload" not in json.loads(result.stdout)["modules"]  # only the program's own import ran


@pytest.mark.parametrize(
    "breakage",
    [
        "raise RuntimeError('a broken install')\n",  # peft_ext itself fails to import
        None,  # peft_ext is gone, the hook left behind
    ],
)
def test_a_broken_install_does_not_break_python_start(built, breakage, tmp_path):
    target = tmp_path / "target"
    shutil.copytree(built["target"], target)
    if breakage is None:
        shutil.rmtree(target / "peft_ext")
    else:
        (target / "peft_ext" / "__init__.py").write_text(breakage)
    code = "import site, sys; site.addsitedir(sys.argv[1]); print('started')"
    result = _python("-S", "-c", code, str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("peft-ext: startup hook skipped ("), lines
