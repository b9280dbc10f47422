"""python -m growth {grow,learn,layers,plan,stages} ...: see `python -m growth COMMAND --help`."""

import sys

from lit_gpt.exits import guard_command

COMMANDS = ("grow", "learn", "layers", "plan", "stages")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: python -m growth {{{','.join(COMMANDS)}}} ...\n\n{__doc__.strip()}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"error: {given}; choose one of {', '.join(COMMANDS)} (see python -m growth --help)", file=sys.stderr)
        return 2
    if argv[0] == "grow":
        from growth.grow import main as command
    elif argv[0] == "learn":
        from growth.learn import main as command
    elif argv[0] == "layers":
        from growth.layers import main as command
    elif argv[0] == "plan":
        from growth.plan import main as command
    else:
        from growth.stages import main as command
    return command(argv[1:])


if __name__ == "__main__":
    guard_command()
    sys.exit(main())
