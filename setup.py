"""setuptools' build script for one step pyproject.toml cannot declare; all metadata stays in ``[project]`` there.

The step: ``peft_ext_autoload.pth`` goes to the root of site-packages, so that installing peft-ext is enough for PEFT
to load SOFT_PROMPT adapters in programs that never import peft_ext (see ``peft_ext/_autoload.py``). A file at the
root of site-packages is no package's data, so ``build_py`` puts it there itself, in a wheel and in an editable
install alike.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HOOK = "peft_ext_autoload.pth"


class build_py_with_startup_hook(build_py):  # noqa: N801  (named like the command it extends)
    """``build_py`` that also copies the startup hook to the root of what gets installed."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(Path(__file__).parent / HOOK), self._hook_target(), preserve_mode=False)

    def _hook_target(self) -> str:
        # A wheel holds what install copies from build_lib. An editable wheel (PEP 660) does not: setuptools'
        # editable_wheel points ``install``'s install_lib at the folder it zips into the wheel, and build_lib at a
        # scratch folder that never reaches site-packages.
        folder = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        return str(Path(folder) / HOOK)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        # In editable mode the outputs are what links into build_lib: the hook is not one of them.
        return outputs if self.editable_mode else [*outputs, self._hook_target()]


setup(cmdclass={"build_py": build_py_with_startup_hook})
