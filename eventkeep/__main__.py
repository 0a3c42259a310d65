"""`python -m eventkeep`, and the `eventkeep` command."""

import os

# eventkeep does no linear algebra, but numpy (imported by pyarrow and the DuckDB store)
# starts OpenBLAS with a thread per core, and those threads spin now and then: about a
# tenth of a second of CPU per million events imported. The command owns its process (and
# its server's workers inherit this), so it asks for one, before anything imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from eventkeep.cli import main

if __name__ == "__main__":  # worker processes import this module too; they must not serve
    raise SystemExit(main())
