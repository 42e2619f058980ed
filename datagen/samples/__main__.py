"""``python -m datagen.samples DIR``: the small inputs of every source, made here (no downloads)."""

import argparse

from datagen.samples import make_all

p = argparse.ArgumentParser(prog="python -m datagen.samples", description=__doc__.split(": ", 1)[1])
p.add_argument("dir", help="folder to write them into (configs/sample.yaml reads data/inputs)")
for name, paths in make_all(p.parse_args().dir).items():
    print(f"{name}: {paths}")
