import sys

from mvrag_jax.cli import main

if __name__ == "__main__":  # grain's spawned workers re-import the main module
    sys.exit(main())
