"""The engine's routes: the ways one call can be computed.

Each route is an object with ``applies(ctx, leaves)``, ``cost(...)``, ``mode(ctx)``
and ``run(leaves, params, ctx)`` (:class:`~hessquik_core.engine.routes.base.Route`);
where it applies is stated from the request, the declared structure of the layers
(:meth:`~hessquik_core.layers.Layer.affine_structure`) and the backend's
capabilities, never from a layer's or a library's name. The planner
(``hessquik_core.engine.plan``) asks all of them, prices those that apply and
settles the call for one:

* :mod:`.value` — value only, one plain pass;
* :mod:`.classic` — the forward and backward sweeps (``engine/forward.py``,
  ``engine/backward.py``), for any chain;
* :mod:`.highdim` — the Gram-root Laplacian and the cyclic-trace divergence
  (``engine/highdim.py``) for a plain affine first layer narrower than ``d``;
* :mod:`.higher` — the bi-Laplacian sweep (``biharmonic=True``), the only route
  computing Δ²u;
* :mod:`.analytic_step` — a recorded training step of a declared affine chain as
  one custom-gradient function, run inside the forward route as the plan settled it
  (its switches: :mod:`.switches`).
"""
