"""Check a configuration and print its resolved values.

    python -m hparams --config egs/cifar10_baseline.cfg --set train.batch_size=16

Exits with status 2 and a one-line message if the configuration is invalid.
Reads a run's saved copy when it exists, like the entry scripts; writes nothing.
"""
from __future__ import annotations

from .cli import load_config_or_exit, parse_args
from .formatting import format_value


def main() -> None:
    args = parse_args(description=__doc__.splitlines()[0])
    config = load_config_or_exit(args, save=False)
    print(f"# resolved from {config.source}")
    for section, values in config.to_dict().items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {format_value(value)}")
        print()


if __name__ == "__main__":
    main()
