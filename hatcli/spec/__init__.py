"""The YAML spec: loading with positions, interpolation, schema assembly and validation."""

from hatcli.spec.spec import Spec, load_spec

__all__ = ["Spec", "load_spec"]
