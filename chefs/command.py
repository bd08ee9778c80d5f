"""How a step's command line is started: exec'd directly when no shell is needed, else `sh -c`.

A compile line such as `gcc -O2 -c src/a.c -o build/a.o` means the same exec'd as its words as
through `/bin/sh -c`: the shell would only split it at blanks and exec the program. Skipping the
shell saves starting dash on every step (~0.3 ms of CPU each, ~11 ms of a 38-step clean build of
examples/c-project on 2 cores). GNU make does the same for recipe lines without shell syntax.

Anything the shell would interpret keeps the shell: quotes, `$`, redirections, globs, `~`, `#`,
`;`, `&`, `|`, parentheses, backslashes, newlines, non-ASCII bytes (one character outside the
plain set is enough), a leading `NAME=value`, and a first word that is a shell builtin or
reserved word (`cd`, `exit`, `echo`, `test`, `if`, ...: builtins may differ from the programs of
the same name, and some have none).
"""

from __future__ import annotations

import re

SHELL = "/bin/sh"

# Words made only of these characters mean the same to the shell and to exec.
_PLAIN_LINE = re.compile(r"[ \t]*[A-Za-z0-9_./=+,:@%-]+(?:[ \t]+[A-Za-z0-9_./=+,:@%-]+)*[ \t]*")

# dash's builtins and the POSIX reserved words.
_SHELL_WORDS = frozenset("""
    . : [ alias bg break cd chdir command continue echo eval exec exit export false fg getopts hash
    jobs kill local printf pwd read readonly return set shift test times trap true type ulimit umask
    unalias unset wait
    ! { } case do done elif else esac fi for if in then until while
""".split())


def command_argv(command: str) -> list[str]:
    """The argv that runs `command`: its words where the shell would add nothing, else `sh -c`."""
    if _PLAIN_LINE.fullmatch(command):
        words = command.split()
        if "=" not in words[0] and words[0] not in _SHELL_WORDS:
            return words
    return [SHELL, "-c", command]
