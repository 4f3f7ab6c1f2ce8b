import sys

from mvrag_jax.cli import main

sys.exit(main())
