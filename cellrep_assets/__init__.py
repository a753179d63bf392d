"""cellrep_assets — Dagster wiring of cellrep: partitions, resources, assets, checks, sensors.

No science lives here: every asset reads through a resource, calls one ``cellrep_ml``
function, writes, and reports metadata.
"""
