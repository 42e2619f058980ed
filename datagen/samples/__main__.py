import sys

from datagen.samples import make_all

if len(sys.argv) != 2:
    sys.exit("usage: python -m datagen.samples DIR")
for name, paths in make_all(sys.argv[1]).items():
    print(f"{name}: {paths}")
