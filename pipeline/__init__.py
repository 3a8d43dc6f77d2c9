"""PlantMix curation library: plain Python stages, no orchestrator imports.

Packages: ``core`` (config, schema, io, the stage harness, build layout, worker pool), ``sources`` (one adapter
per export format, with captions, licenses and the registry), ``stages`` (crawl, download, embed, judge, in the
order of :data:`pipeline.stages.STAGES`), ``query`` (SQL views, summary, the ``plantmix`` CLI), ``demo`` (the
loopback host for the bundled offline sample). ``runner`` runs the stages in order without an orchestrator.
"""

__version__ = "0.1.0"
