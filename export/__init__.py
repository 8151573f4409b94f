"""surroflos.export: NIR (Neuromorphic Intermediate Representation) export and
import of surroflos networks."""

__all__: list[str] = []
