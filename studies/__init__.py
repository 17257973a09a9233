"""Research studies: each a module with a `main()` over the package's public API, run as
`python -m studies.<name> --help`, that answers one question on real caches and runs and appends
its rows to a CSV (docs/data/). Timings live in bench/; findings are reported in docs/."""
