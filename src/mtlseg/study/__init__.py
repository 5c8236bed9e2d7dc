"""Studies: comparisons that accumulate records over days and machines (``mtlseg study``)."""
