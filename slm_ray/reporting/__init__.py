"""A sweep's summary tables, paired comparisons and plots, rebuilt from its folder (``slm-ray report``
and the end of every sweep)."""
