"""Pipeline stages. Each is a small named object; see :mod:`dataprep.stages.base`."""
