"""jkofast: fast continuous normalizing flows trained by the JKO scheme (JKO-iFlow).

The public API (see README.md)::

    field = jkofast.VelocityField(dim, hidden=128, layers=3, activation="softplus")
    f, div = jkofast.divergence(field, x, t, method="exact")
    x1, logdet, kinetic = jkofast.rk4(field, x, t0, t1, steps)
    flow = jkofast.train(x_train, method="jko-iflow", val=x_val)   # or "jko-flow", "interpolant"
    scores = jkofast.evaluate(flow, x_test)                        # NLL +/- s.e., MMD, training cost
    scores = jkofast.evaluate_sharded(flow, "test.npy", baseline_train="train.npy")  # streamed (mmd_points=: MMD too)
    z, logdet = flow.transform(x); x = flow.inverse(z); flow.log_prob(x); flow.sample(n)
    flow.save(path); flow = jkofast.Flow.load(path)
    x = jkofast.datasets.toy("moons", n, seed=0)
"""
from ._version import __version__
from . import datasets
from ._extension import CompiledExtensionWarning
from ._kernel_check import KernelCheckWarning
from ._warn import JkofastWarning
from .divergence import divergence, velocity
from .evaluate import evaluate, evaluate_sharded
from .field import Field, VelocityField
from .flow import Flow
from .integrate import rk4
from .train import train

__all__ = ["__version__", "CompiledExtensionWarning", "JkofastWarning", "KernelCheckWarning", "datasets", "divergence", "evaluate", "evaluate_sharded", "Field",
           "VelocityField", "Flow", "rk4", "train", "velocity"]
