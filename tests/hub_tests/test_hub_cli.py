"""``peft-ext hub ...``: commands on both stores, one-line errors, and the entry-point hook."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_hub_server import FakeHub
from hub_testutils import REPO, TOKEN

from hub.cli import main, register


@pytest.fixture(params=["local", "hf"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    if request.param == "local":
        return ["--root", str(tmp_path / "store")]
    server: FakeHub = request.getfixturevalue("fake_hub")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return ["--store", "hf", "--endpoint", server.url, "--cache-dir", str(tmp_path / "hf_cache")]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_commands_end_to_end(store_args: list[str], adapter: Callable[..., Path], capsys) -> None:  # noqa: ANN001
    first, second = adapter(seed=1), adapter(seed=2)
    code, out, _ = run(capsys, "push", str(first), REPO, "--task", "coach", "--metrics", '{"acc": 1}', *store_args)
    assert code == 0 and "coach 1.0.0: pushed" in out
    assert run(capsys, "push", str(second), REPO, "--task", "coach", "--bump", "minor", *store_args)[0] == 0
    assert run(capsys, "push", str(first), REPO, "--task", "coach", "--version", "1.0.0", *store_args)[1].count(
        "unchanged"
    )
    assert run(capsys, "tasks", REPO, *store_args)[1] == "coach\n"
    assert run(capsys, "yank", REPO, "coach", "1.1.0", "--reason", "bad", *store_args)[0] == 0
    versions = run(capsys, "versions", REPO, "coach", *store_args)[1].splitlines()
    assert versions[0] == "1.0.0" and versions[1].startswith("1.1.0  yanked")
    code, out, _ = run(capsys, "pull", REPO, "coach", "^1.0", *store_args)
    assert code == 0 and (Path(out.strip()) / "adapter_model.safetensors").is_file()
    shown = json.loads(run(capsys, "show", REPO, "coach", "1.1.0", *store_args)[1])
    assert shown["version"] == "1.1.0" and shown["yanked"] is True
    assert json.loads(run(capsys, "show", REPO, "coach", *store_args)[1])["metrics"] == {"acc": 1}
    code, out, _ = run(capsys, "diff", str(first), f"{REPO}:coach@1.1.0", *store_args)
    assert code == 0 and len(json.loads(out)["tokens"]) == 4


def test_user_errors_are_one_line(store_args: list[str], adapter: Callable[..., Path], capsys) -> None:  # noqa: ANN001
    run(capsys, "push", str(adapter(seed=1)), REPO, "--task", "coach", *store_args)
    for argv in (
        ["push", str(adapter(seed=2)), REPO, "--task", "coach", "--version", "1.0.0"],
        ["push", str(adapter(seed=2)), REPO, "--task", "../x"],
        ["pull", REPO, "coach", "^9"],
        ["pull", REPO, "coach", "^x"],
        ["push", "/nonexistent/folder", REPO, "--task", "coach"],
    ):
        code, out, err = run(capsys, *argv, *store_args)
        assert code == 2 and out == "" and err.startswith("hub: error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err and TOKEN not in err


def test_register_adds_a_hub_command_with_a_handler() -> None:
    parser = argparse.ArgumentParser(prog="peft-ext")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["hub", "versions", REPO, "coach"])
    assert callable(args.handler)
    with pytest.raises(SystemExit):
        parser.parse_args(["hub", "push", "folder", REPO, "--task", "t", "--version", "1.0.0", "--bump", "major"])
