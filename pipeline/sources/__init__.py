"""Source adapters: one module per published export format, each turning its rows into candidate manifest rows.

The contract lives in :mod:`pipeline.sources.base`; the name -> module registry in :mod:`pipeline.sources.registry`.
"""
