"""``python -m models.train CONFIG.yaml [key=value ...]``: the same as ``synthset train``."""

import argparse
import logging

from models.train import load_train_config, run_training


def main(argv: list[str] | None = None) -> None:
    """Parse a config path plus overrides, train, print the export folder."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", help="training YAML (see models/train/configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value, e.g. steps=100")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(run_training(load_train_config(args.config, args.overrides)))


if __name__ == "__main__":
    main()
