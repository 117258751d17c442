"""lifeline(1), made from the CLI's own parsers: every command's --help, in order.

    /opt/lifeline/bin/python debian/manpage.py > lifeline.1
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone

from daemon import __version__
from daemon.cli import build_parser


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


def roff(text: str) -> str:
    lines = (line.replace("\\", "\\\\") for line in text.splitlines())
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def main() -> None:
    os.environ["COLUMNS"] = "90"
    epoch = os.environ.get("SOURCE_DATE_EPOCH")  # set by dpkg-buildpackage: reproducible
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    root = build_parser()
    print(f'.TH LIFELINE 1 "{when:%Y-%m-%d}" "lifeline {__version__}" "lifeline"')
    print(".SH NAME\nlifeline \\- resilience daemon for trading execution hosts, and its commands")
    print(".SH SYNOPSIS\n.B lifeline\n.I COMMAND\n[\\fIOPTIONS\\fR]")
    print(".SH DESCRIPTION")
    print("Each command's own help follows (the same text as \\fBlifeline COMMAND --help\\fR). "
          "Config: /etc/lifeline/lifeline.toml (commented); units: lifeline.service, "
          "lifeline-witness.service; examples and monitoring files: /usr/share/lifeline/.")
    print(".SH COMMANDS")
    for path, parser in commands(root):
        print(f".SS {' '.join(('lifeline',) + path)}")
        print(".nf")
        print(roff(parser.format_help()))
        print(".fi")
    print(".SH EXIT STATUS\n0 success or healthy; 1 a check failed or something is unhealthy; 2 usage error or "
          "the daemon could not be reached; 78 (\\fBlifeline run\\fR) the config or this host cannot work.")


if __name__ == "__main__":
    main()
