"""The paper's recurrences as pure functions of arrays and a bound backend ``ops``.

``affine`` holds the rule of :math:`\\sigma(uM + b)` (forward, backward and
parameter passes), shared by the dense, residual and input-convex layers;
``contractions`` the batched products they are built from; ``directions``
the contractions of the parameter-space passes.
"""
