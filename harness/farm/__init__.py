"""Device farms: an inventory of boards (``farm.toml``), leases held on the boards themselves, their status, and
the scheduler that keeps every board busy (``sparsebench farm ...``, ``sparsebench run --farm``)."""
