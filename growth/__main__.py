"""python -m growth {grow,learn,layers,plan,stages} ...: see `python -m growth COMMAND --help`."""

import sys

COMMANDS = ("grow", "learn", "layers", "plan", "stages")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m growth {{{','.join(COMMANDS)}}} ...\n\n{__doc__.strip()}", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
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
    sys.exit(main())
