"""surroflos.tasks: temporal cognitive task generators and Tonic event-based
datasets."""

__all__: list[str] = []
