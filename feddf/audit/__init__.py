"""Audits of transfer sets and comparisons of runs: class coverage, labeler coverage, FID (`feddf audit`), and
accuracy-vs-round reports (`feddf compare`). docs/audit.md documents every number.

    feddf audit cache/dcgan-fashion-mnist-28px-20000.h5 --labeler runs/demo-feddf

Modules: coverage (pure histogram maths), sources (caches opened read-only), labeler, fid (+ reference statistics in
reference), run (the audit pipeline), compare (run folders), plots and report (PNG figures, json/md/html writers).
"""
