"""The math of each optimizer over flat lists of tensors.

Each optimizer's step is written once, against an :class:`~functional_optim._kernels.ops.Ops`
implementation that decides whether state is updated out of place (the pure functional path),
in place one tensor at a time (torch's for-loop) or in place with ``torch._foreach_*`` (torch's
foreach). Fused kernels, where torch has them, are called directly by the kernel module.
"""
