"""State flow, tablet side: parsing reports, the device shadow, summaries."""
