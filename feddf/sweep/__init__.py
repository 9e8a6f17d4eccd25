"""`feddf sweep`: grids of `feddf train` runs from a TOML file (grid.py), run N at a time and resumably (run.py),
tabulated as mean ± std over seeds (table.py). docs/sweeps.md."""
