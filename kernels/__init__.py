"""surroflos.kernels: fused Triton kernels for multi-step surrogate-gradient
neurons and their tangent dynamics, each beside its plain-PyTorch reference
implementation. Arrives in a later issue."""

__all__: list[str] = []
