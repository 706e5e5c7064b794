"""Dockerfile: parsed with BuildKit's own parser (the ``dockerfile`` package), no Docker engine.

Checks what the deployment relies on: a builder stage and a slim runtime stage, a non-root numeric
user, a HEALTHCHECK on the worker's /health, exec-form ENTRYPOINT/CMD (so SIGTERM reaches the
worker), the state directory on a volume, settings that exist, and COPY sources that exist and get
past .dockerignore."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from pipeline.cli import build_parser
from pipeline.settings import ENV_PREFIX, Settings
from tests.deploy.common import REPO
from tests.deploy.dockerfile_model import Stage, parse

DOCKERIGNORE = REPO / ".dockerignore"


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse()


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_multi_stage_with_a_slim_python_runtime(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert builder.name and runtime.name
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", runtime.base), runtime.base
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert runtime.base.startswith("python:" + requires.removeprefix(">=") + "-"), (
        "the image runs the oldest Python the project supports"
    )
    # The runtime takes the built venv from the builder; it installs nothing itself.
    assert any(c.flags == (f"--from={builder.name}",) for c in runtime.all("COPY"))
    assert not any("pip install" in c.value[0] for c in runtime.all("RUN"))


def test_runs_as_a_numeric_non_root_user(runtime: Stage) -> None:
    user = runtime.last("USER").value[0]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes' runAsNonRoot can check it"
    assert gid.isdigit() and int(gid) != 0
    assert runtime.commands.index(runtime.last("USER")) > max(
        runtime.commands.index(c) for c in runtime.all("RUN")
    ), "USER comes after the last RUN"


def test_entrypoint_and_cmd_are_exec_form_and_run_a_worker(runtime: Stage) -> None:
    entrypoint, cmd = runtime.last("ENTRYPOINT"), runtime.last("CMD")
    assert entrypoint.json and cmd.json, "exec form: pipeline is PID 1 and gets SIGTERM itself"
    assert list(entrypoint.value) == ["pipeline"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "pipeline" in scripts
    args = build_parser().parse_args(list(cmd.value))
    assert args.command == "worker"
    assert image_path_to_repo(runtime, str(args.topology)).is_file()


def test_healthcheck_asks_the_workers_health_endpoint(runtime: Stage) -> None:
    check = runtime.last("HEALTHCHECK")
    assert check.json and check.value[0] == "CMD", "exec form: no shell in the way"
    script = " ".join(check.value[1:])
    assert "/health" in script
    assert f"'PIPELINE_WEB_PORT', '{Settings().web_port}'" in script
    flags = dict(flag.removeprefix("--").split("=", 1) for flag in check.flags)
    assert {"interval", "timeout", "start-period", "retries"} <= flags.keys()
    expose = [port for c in runtime.all("EXPOSE") for port in c.value]
    assert str(Settings().web_port) in expose
    assert runtime.env()["PIPELINE_WEB_PORT"] == str(Settings().web_port)
    assert runtime.env()["PIPELINE_WEB_BIND"] == "0.0.0.0", "reachable from outside the container"


def test_state_lives_on_a_volume(runtime: Stage) -> None:
    env = runtime.env()
    volumes = [v for c in runtime.all("VOLUME") for v in c.value]
    assert env["PIPELINE_DATA_DIR"] in volumes
    assert env["PIPELINE_STORE"] == "rocksdb"


def test_every_pipeline_variable_is_a_setting(runtime: Stage) -> None:
    env = {k: v for k, v in runtime.env().items() if k.startswith(ENV_PREFIX)}
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    assert env.keys() <= known, f"not settings: {env.keys() - known}"
    Settings.from_env(env)  # and their values are valid


def image_path_to_repo(runtime: Stage, path: str) -> Path:
    """The repository file a path in the image comes from (through the runtime's COPYs)."""
    for command in runtime.all("COPY"):
        if command.flags:
            continue
        *sources, dest = command.value
        for source in sources:
            if path.startswith(dest.rstrip("/") + "/"):
                return REPO / source / path[len(dest.rstrip("/")) + 1 :]
    raise AssertionError(f"{path} is not copied into the image")


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent directory
    matches everything under it."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_every_copy_source_exists_and_passes_dockerignore(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    names = set()
    copied = 0
    for stage in stages:
        for command in stage.all("COPY") + stage.all("ADD"):
            assert command.cmd == "COPY", "ADD fetches and unpacks: use COPY"
            if command.flags and command.flags[0].startswith("--from="):
                assert command.flags[0].removeprefix("--from=") in names
                continue
            for source in command.value[:-1]:
                path = REPO / source
                assert path.exists(), f"COPY {source}: not in the repository"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                for file in files:
                    relative = file.relative_to(REPO).as_posix()
                    if "__pycache__" in relative:
                        continue
                    assert not dockerignore_excludes(relative, patterns), (
                        f"COPY {source}: {relative} is excluded by .dockerignore"
                    )
                    copied += 1
        names.add(stage.name)
    assert copied > 10
    for private in (".venv/bin/python", ".git/HEAD", ".local/state", "tests/conftest.py"):
        assert dockerignore_excludes(private, patterns), f"{private} would reach the builder"


def test_the_ignore_matcher_follows_docker() -> None:
    patterns = ["*", "!pipeline/", "**/__pycache__"]
    assert dockerignore_excludes("README.md", patterns)
    assert not dockerignore_excludes("pipeline/cli.py", patterns)
    assert dockerignore_excludes("pipeline/core/__pycache__/x.pyc", patterns)
    assert dockerignore_excludes("tests/deploy/common.py", ["tests"])
