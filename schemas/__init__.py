"""The published JSON Schema of a ``hat`` spec, installed as ``hatcli.schemas``."""
