"""HDF5 caches of images: the format (format.py), the writer used by `feddf gen` and `feddf cache import`, and the
readers/streams used by distillation and audits. `docs/cache-format.md` is the contract."""
