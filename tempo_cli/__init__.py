"""tempo: long video generation by next-frame-rate prediction (TempoMaster)."""

__version__ = "0.1.0.dev0"
