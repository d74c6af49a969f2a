"""`python -m safeft.train CONFIG [--set KEY=VALUE ...] [--resume]`: what `deepspeed --module` and Ray launch."""

import sys

from safeft.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
