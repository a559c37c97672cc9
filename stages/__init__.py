"""tempo's built-in stage plugins (blueprint, refine, continue, encode)."""
