"""The ``cloudckpt`` command line."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "demo":
        from cloudckpt.demo import main as demo_main

        return demo_main(args[1:])
    print("usage: cloudckpt demo [--uri URI] [--steps N]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
