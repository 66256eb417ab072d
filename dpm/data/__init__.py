"""LightningDataModules, one per data set, on a shared base (dpm.data.base)."""
