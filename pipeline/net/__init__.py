"""The crawl's network layer: which URLs and addresses may be fetched, and the one bounded client that fetches.

:mod:`.urls` (IRI -> URI, http(s) only), :mod:`.addresses` (public addresses plus a recipe allowlist, checked
at connect time), :mod:`.client` (urllib3 connection pools that use both; byte, time and redirect limits).
"""
