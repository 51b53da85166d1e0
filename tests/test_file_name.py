"""`fileName`: the code runs as /sandbox/<name>, so tracebacks name the user's file; a name is a plain
file name, never a path, a dot file or something a cmd could use."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.engine import DockerIsol8
from engine.models import ExecutionRequest

BAD_NAMES = [
    "../etc/passwd",
    "/etc/passwd",
    "a/b.py",
    "a\\b.py",
    ".isol8-setup.sh",
    ".bashrc",
    "..",
    ".",
    "",
    "x\0.py",
    "sp ace.py",
    "ünï.py",
    "-rf.py",
    "a" * 129,
    "a;rm -rf.py",
    "$(id).py",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_file_name_that_is_not_a_plain_name_is_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="Invalid file name"):
        ExecutionRequest(code="1", file_name=name)


def test_a_file_name_goes_with_code_only_and_carries_its_extension() -> None:
    assert ExecutionRequest.model_validate({"code": "1", "fileName": "train.py"}).file_name == "train.py"
    with pytest.raises(ValidationError, match="a cmd has none"):
        ExecutionRequest(cmd="ls", file_name="train.py")
    with pytest.raises(ValidationError, match="leave fileExtension out"):
        ExecutionRequest(code="1", file_name="train.py", file_extension=".py")


@pytest.mark.docker
async def test_a_traceback_names_the_file(engine: DockerIsol8) -> None:
    code = 'print(__file__)\nraise KeyError("boom")\n'
    result = await engine.execute(ExecutionRequest(code=code, runtime="python", file_name="train.py"))
    assert result.stdout == "/sandbox/train.py\n"
    assert 'File "/sandbox/train.py", line 2' in result.stderr and result.exit_code == 1


@pytest.mark.docker
async def test_node_runs_the_named_file_with_its_own_module_kind(engine: DockerIsol8) -> None:
    code = "console.log(typeof require, __filename)\n"
    result = await engine.execute(ExecutionRequest(code=code, runtime="node", file_name="tool.cjs"))
    assert result.stdout == "function /sandbox/tool.cjs\n", result.stderr


def test_args_are_an_argv_for_code_only() -> None:
    assert ExecutionRequest(code="1", args=["--epochs", "3"]).args == ["--epochs", "3"]
    with pytest.raises(ValidationError, match="a cmd carries its own"):
        ExecutionRequest(cmd="ls", args=["-l"])
    with pytest.raises(ValidationError, match="without a NUL byte"):
        ExecutionRequest(code="1", args=["a\0b"])
    with pytest.raises(ValidationError):
        ExecutionRequest(code="1", args=["x"] * 257)


@pytest.mark.docker
@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        ("python", "import sys; print(sys.argv[1:])"),
        ("node", "console.log(JSON.stringify(process.argv.slice(2)).replaceAll('\"', \"'\").replaceAll(',', ', '))"),
        ("bash", 'printf "[%s]\\n" "$(printf "%s, " "$@" | sed "s/, $//")"'),
    ],
)
async def test_args_reach_the_program_as_given(engine: DockerIsol8, runtime: str, code: str) -> None:
    """Arguments are an argv: spaces, quotes and shell characters arrive as they are, nothing runs."""
    args = ["--name", "a b", "$(id)", "x;y"]
    result = await engine.execute(ExecutionRequest(code=code, runtime=runtime, args=args))
    assert result.exit_code == 0, result.stderr
    if runtime == "bash":
        assert result.stdout == "[--name, a b, $(id), x;y]\n"
    else:
        assert result.stdout == "['--name', 'a b', '$(id)', 'x;y']\n"
