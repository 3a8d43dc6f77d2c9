"""PlantMix curation library: plain Python stages, no orchestrator imports."""

__version__ = "0.1.0"
