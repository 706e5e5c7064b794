"""The repository's Dockerfile as stages of instructions, parsed by BuildKit's own parser (the
``dockerfile`` package wraps it), so a syntax error here is one for ``docker build`` too."""

from __future__ import annotations

import re
from dataclasses import dataclass

import dockerfile

from tests.deploy.common import REPO

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Stage:
    name: str | None
    base: str
    commands: list[dockerfile.Command]

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == cmd]

    def last(self, cmd: str) -> dockerfile.Command:
        found = self.all(cmd)
        assert found, f"stage {self.name or self.base} has no {cmd}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for command in self.all("ENV"):
            pairs = command.value
            values.update(zip(pairs[::2], pairs[1::2], strict=True))
        return values


def parse() -> list[Stage]:
    """The stages in order (global ARG defaults substituted in their FROM lines)."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], command.value[0])
            name = command.value[2] if len(command.value) == 3 else None
            stages.append(Stage(name, base, []))
        elif not stages and command.cmd == "ARG":
            key, _, value = command.value[0].partition("=")
            args[key] = value
        else:
            assert stages, f"{command.cmd} before the first FROM"
            stages[-1].commands.append(command)
    return stages
