"""Python side of the compiled ops: fake (meta) implementations and autograd formulas.

Importing this package requires ``jkofast._C`` to be loaded (it defines the schemas); the
wrappers here take explicit weight lists, like :mod:`jkofast.reference`, whose functions they
mirror and against which they are tested.
"""
from .mlp_field import mlp_field, mlp_field_div
from .jko_block_loss import jko_block_loss
from .rk4_block import rk4_block

# Each name is a forward op's, jkofast::<name>: _backend asks the dispatcher which devices each has
# kernels for (an entry that is not an op would fail import jkofast wherever the extension loads).
__all__ = ["mlp_field", "mlp_field_div", "rk4_block", "jko_block_loss"]
