"""`python -m specdec_lib.bench`: the benchmark's command line (specdec_lib.cli.bench)."""

from ..cli.bench import main

main()
