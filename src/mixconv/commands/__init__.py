"""Sub-commands of the ``mixconv`` CLI; each module exposes ``add_parser(subparsers)`` and ``run(args)``."""
