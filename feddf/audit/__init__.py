"""Audits of transfer sets and comparisons of runs: class coverage, labeler coverage, FID (`feddf audit`), and
accuracy-vs-round reports (`feddf compare`). docs/audit.md documents every number.

    feddf audit cache/dcgan-fashion-mnist-28px-20000.h5 --labeler runs/demo-feddf

Modules: coverage (pure histogram maths), sources (caches opened read-only), labeler, fid (+ reference statistics in
reference), run (the audit pipeline), entry (`feddf.audit(...)`: run + write the report), compare (run folders), plots
and report (PNG figures, json/md/html writers).
"""
import sys as _sys
import types as _types


class _CallableAudit(_types.ModuleType):
    """`feddf.audit(...)` calls `feddf.audit.entry.audit` (= `feddf.api.audit`, docs/api.md). The name is also this
    package, and Python sets the package attribute `feddf.audit` to this module whenever a submodule is imported, so
    a plain function of that name would be replaced by the module depending on import order; making the module
    callable avoids the clash."""

    def __call__(self, *args, **kwargs):
        from feddf.audit.entry import audit

        return audit(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableAudit
