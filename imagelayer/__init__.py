"""Turn mtree entries into deterministic, bsdtar-identical OCI layers."""
