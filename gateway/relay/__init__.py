"""State flow, academy side: what goes upstream, in what order, how fast."""
