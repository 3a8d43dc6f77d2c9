"""The data mixing law (DESIGN.md section 6): fit how each evaluation domain's metric moves with the mixture of
training data on a few proxy runs, and choose the general-domain share from the fitted curves.

    law.py      the law and its robust fit, with residuals, leave-one-out error and reliability flags
    choose.py   the share by a rule: the critical share (the general metric returns to L0) or a weighted optimum
    inputs.py   proxy results from CSV/Parquet or from ``python -m dalip.evaluate`` reports
    result.py   ``fit_and_choose`` and ``write_result``: the JSON-able result the proxy-run flow writes
    plot.py     points, fitted curves, L0 and the chosen share as a byte-stable PNG
    cli.py      ``plantmix mixing-law fit``

Plain Python, numpy and scipy (matplotlib for the plot only): no Prefect, no torch. Nothing is imported here so
that ``plantmix sql`` does not pay for scipy.
"""
