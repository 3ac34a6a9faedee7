"""hessQuik's layers and networks as torch ``nn.Module`` s computing through hessquik-core.

Each compat block owns its weights as ``nn.Parameter`` s under hessQuik's
names (``K``, ``b``, ``layer.K``, ``v``, ``mu``, ``A`` ...), so everything
torch offers on modules works as it does for hessQuik: ``parameters()``,
``state_dict()``, ``.to(device/dtype)``, ``train()/eval()``, optimizers,
``torch.save``. A call hands the current parameter tensors to a hessquik-core
twin of the block (built once, from the block's configuration) and lets it
compute value and derivatives with the torch backend; every operation there
is an ordinary torch operation, so autograd carries ``loss.backward()`` from
the value, the gradient, the Hessian or the Laplacian back to the
``nn.Parameter`` s.

The classes are created on first use (torch is imported then), and placed in
:mod:`hessquik_core.compat.layers` / :mod:`hessquik_core.compat.networks`
under their hessQuik names, so pickling a whole module finds them. That one
closure over torch is why this module is over 400 lines.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import numpy as np

from ._call import AUTO, hessquik_call

LAYER_NAMES = (
    "hessQuikLayer",
    "singleLayer",
    "resnetLayer",
    "ICNNLayer",
    "quadraticLayer",
    "quadraticICNNLayer",
)
NETWORK_NAMES = ("NN", "fullyConnectedNN", "resnetNN", "ICNN", "NNPytorchAD", "NNPytorchHessian", "from_core")

_classes: dict[str, object] = {}

_NO_TORCH = (
    "hessquik_core.compat's layers and networks are torch nn.Modules, as hessQuik's are, and need "
    "PyTorch (pip install torch); without torch use hessquik-core's own classes "
    "(hessquik_core.SingleLayer, hessquik_core.NN, ...), which take the same arguments and weights"
)


def torch_classes() -> dict[str, object]:
    """Create (once) and return the compat layer and network classes by name."""
    if _classes:
        return _classes
    try:
        import torch
    except ImportError as err:  # pragma: no cover - torch is installed in the test environment
        raise ImportError(_NO_TORCH) from err
    _classes.update(_build(torch))
    return _classes


def _torch_dtype(torch, dtype):
    """hessQuik's ``dtype=`` (torch, NumPy or a name; ``None`` = torch's default dtype)."""
    if dtype is None:
        return torch.get_default_dtype()
    if isinstance(dtype, torch.dtype):
        name = str(dtype)
    elif isinstance(dtype, str):
        name = dtype
    elif isinstance(dtype, type) and issubclass(dtype, np.generic):
        name = np.dtype(dtype).name
    else:
        name = str(dtype)
    name = name.split(".")[-1]
    if name not in ("float16", "bfloat16", "float32", "float64"):
        raise TypeError(f"dtype must be a floating dtype (float16, float32 or float64), got {dtype!r}")
    return getattr(torch, name)


def _build(torch) -> dict[str, object]:  # noqa: C901 - one closure over torch for all classes
    from torch import nn

    from .. import layers as L
    from .. import networks as N
    from ..backends import BACKEND_NAMES
    from .activations import as_compat

    def seed_from_torch(seed):
        # hessQuik draws its initial weights from torch's generator, so that
        # torch.manual_seed makes them reproducible; hessquik-core's initialiser
        # gets its seed from that generator for the same effect
        if seed is None:
            return int(torch.randint(0, 2**62, (1,)).item())
        return seed

    def as_tensor(value, like=None):
        """A parameter value from a state dict of any library, as a torch tensor."""
        if isinstance(value, torch.Tensor):
            return value
        try:
            arr = np.array(value)  # a copy: NumPy's read-only arrays cannot be shared with torch
        except Exception as err:
            raise TypeError(
                f"a parameter value must be a torch tensor or an array convertible to NumPy, "
                f"got {type(value).__name__}"
            ) from err
        t = torch.from_numpy(arr)
        return t if like is None else t.to(device=like.device)

    class _Block(nn.Module):
        """Machinery shared by the compat layers and networks (not a hessQuik class)."""

        _FORWARD_DEFAULT = True  # hessQuik's layers compute in forward mode unless told otherwise

        # -- the hessquik-core twin ---------------------------------------
        def _make_core(self, seed):  # pragma: no cover - abstract
            raise NotImplementedError

        def _core_tree(self):
            """The hessquik-core twin of this block, built once (the parameters are set per call)."""
            core = self.__dict__.get("_core")
            if core is None:
                core = self._make_core(0)  # the weights are overwritten by every call
                self.__dict__["_core"] = core
            return core

        def _synced(self, live: bool):
            """The twin holding this module's parameter tensors (detached unless ``live``)."""
            core = self._core_tree()
            state = {k: (p if live else p.detach()) for k, p in self.named_parameters(remove_duplicate=False)}
            # public hessquik-core API: stores the tensors themselves (no copy) and
            # drops the per-call conversion cache, so moved or edited tensors are seen
            core.load_state_dict(state)
            return core

        def _adopt(self, core, names, device, dtype) -> None:
            """Register ``core``'s initial values of ``names`` as this module's parameters."""
            dt = _torch_dtype(torch, dtype)
            init = core.state_dict()
            for name in names:
                if name in init:
                    t = torch.tensor(np.array(init[name]), dtype=dt, device=device)
                    self.register_parameter(name, nn.Parameter(t))
                else:
                    self.register_parameter(name, None)

        def __getstate__(self):
            # the twin is rebuilt on demand: pickles and deep copies hold only torch state
            state = super().__getstate__()
            state.pop("_core", None)
            state.pop("_core_cache", None)
            return state

        # -- hessQuik's interface -------------------------------------------
        def dim_input(self) -> int:  # pragma: no cover - abstract
            raise NotImplementedError

        def dim_output(self) -> int:  # pragma: no cover - abstract
            raise NotImplementedError

        def _run(self, x, flags: dict, forward_mode, kwargs: dict):
            core = self._synced(isinstance(x, torch.Tensor))
            return hessquik_call(
                core,
                x,
                d=self.dim_input(),
                m=self.dim_output(),
                forward_mode=forward_mode,
                default_forward=self._FORWARD_DEFAULT,
                kwargs=kwargs,
                **flags,
            )

        def forward(
            self,
            x,
            do_gradient=False,
            do_Hessian=False,
            do_Laplacian=False,
            forward_mode=AUTO,
            dudx=None,
            d2ud2x=None,
            v=None,
            **kwargs,
        ):
            r"""``(f, df, d2f)`` as in hessQuik.

            Parameters
            ----------
            x : array (n, d)
                torch tensor (gradients reach the parameters), or a NumPy /
                Array-API array (results in ``x``'s library, no autograd).
            do_gradient, do_Hessian, do_Laplacian : bool
                As in hessQuik. ``df (n, d, m)`` is returned whenever any
                derivative is requested; the third entry is the Hessian
                ``(n, d, d, m)`` if ``do_Hessian``, else the Laplacian
                ``(n, 1, m)`` if ``do_Laplacian``, else ``None``.
            forward_mode : bool, optional
                Forward or backward mode; not given: forward for a layer (as
                hessQuik's layers), forward iff ``d < m`` for a network. A Laplacian
                without the Hessian is always computed in forward mode.
            v : array, optional
                Directions: ``(k, d)``, one per row, in forward mode (giving
                ``df (n, k, m)``, ``d2f (n, k, k, m)``); ``(m, k)`` in
                backward mode (``df (n, d, k)``, ``d2f (n, d, d, k)``).
            **kwargs
                hessquik-core keywords (``gradient=``, ``hessian=``,
                ``directions=`` ...): the call then returns a
                :class:`~hessquik_core.Result`.
            """
            flags = dict(
                do_gradient=do_gradient,
                do_Hessian=do_Hessian,
                do_Laplacian=do_Laplacian,
                dudx=dudx,
                d2ud2x=d2ud2x,
                v=v,
            )
            return self._run(x, flags, forward_mode, kwargs)

        # -- conveniences -----------------------------------------------------
        def to_core(self):
            """A hessquik-core network or layer computing the same function, holding a
            NumPy copy of the current weights (e.g. for :func:`hessquik_core.save`)."""
            core = copy.deepcopy(self._synced(False))
            core.to("numpy")
            self._synced(False)  # the twin must not keep the copy's arrays alive
            return core

        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
            """torch's ``load_state_dict``; values may also be NumPy (or NumPy-convertible) arrays."""
            own = dict(self.named_parameters())
            state = {k: as_tensor(v, own.get(k)) for k, v in state_dict.items()}
            return super().load_state_dict(state, strict=strict, assign=assign)

        def to(self, *args, **kwargs):
            """torch's ``to``; ``to("torch", device=..., dtype=..., requires_grad=...)``
            (hessquik-core's spelling) is accepted as well."""
            requires_grad = kwargs.pop("requires_grad", None)
            if args and isinstance(args[0], str) and args[0] in BACKEND_NAMES:
                if args[0] != "torch":
                    raise TypeError(
                        f"compat modules keep their parameters as torch tensors, got backend {args[0]!r}; "
                        "use .to_core() for a hessquik-core network with NumPy parameters"
                    )
                args = args[1:]
            out = super().to(*args, **kwargs) if (args or kwargs) else self
            if requires_grad is not None:
                self.requires_grad_(requires_grad)
            return out

    # ------------------------------------------------------------------ layers
    class hessQuikLayer(_Block):
        """Base class of the compat layers (hessQuik's ``hessQuikLayer``)."""

    class singleLayer(hessQuikLayer):
        r""":math:`\sigma(uK + b)`; hessQuik's ``singleLayer`` (default activation: identity)."""

        def __init__(
            self,
            in_features: int,
            out_features: int,
            act=None,
            bias: bool = True,
            device=None,
            dtype=None,
            *,
            seed=None,
        ) -> None:
            super().__init__()
            self.in_features, self.out_features = in_features, out_features
            self.act = as_compat(act, "identity")
            self._bias = bool(bias)
            core = self._make_core(seed_from_torch(seed))
            self._adopt(core, ("K", "b"), device, dtype)
            self.__dict__["_core"] = core

        def _make_core(self, seed):
            return L.SingleLayer(
                self.in_features, self.out_features, act=self.act, bias=self._bias, seed=seed
            )

        def dim_input(self) -> int:
            return self.in_features

        def dim_output(self) -> int:
            return self.out_features

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, act={self.act!r}, bias={self._bias}"

    class resnetLayer(hessQuikLayer):
        r""":math:`u + h\,\sigma(uK + b)`; hessQuik's ``resnetLayer`` (default activation: identity)."""

        def __init__(
            self,
            width: int,
            h: float = 1.0,
            act=None,
            bias: bool = True,
            device=None,
            dtype=None,
            *,
            seed=None,
        ) -> None:
            super().__init__()
            self.width, self.h = width, h
            self.layer = singleLayer(width, width, act=act, bias=bias, device=device, dtype=dtype, seed=seed)

        def _make_core(self, seed):
            return L.ResnetLayer(
                self.width, h=self.h, act=self.layer.act, bias=self.layer.b is not None, seed=seed
            )

        def dim_input(self) -> int:
            return self.width

        def dim_output(self) -> int:
            return self.width

        def extra_repr(self) -> str:
            return f"width={self.width}, h={self.h}"

    class ICNNLayer(hessQuikLayer):
        r"""Input-convex layer on :math:`[u, x]`; hessQuik's ``ICNNLayer`` (default activation: softplus)."""

        def __init__(
            self,
            input_dim: int,
            in_features: int | None,
            out_features: int,
            act=None,
            bias: bool = True,
            device=None,
            dtype=None,
            *,
            seed=None,
        ) -> None:
            super().__init__()
            self.input_dim, self.in_features, self.out_features = input_dim, in_features, out_features
            self.act = as_compat(act, "softplus")
            self.nonneg = torch.nn.functional.softplus
            self._bias = bool(bias)
            core = self._make_core(seed_from_torch(seed))
            self._adopt(core, ("K", "L", "b"), device, dtype)
            self.__dict__["_core"] = core

        def _make_core(self, seed):
            return L.ICNNLayer(
                self.input_dim, self.in_features, self.out_features, act=self.act, bias=self._bias, seed=seed
            )

        def dim_input(self) -> int:
            return self.input_dim + (self.in_features or 0)

        def dim_output(self) -> int:
            return self.out_features + self.input_dim

        def extra_repr(self) -> str:
            return (
                f"input_dim={self.input_dim}, in_features={self.in_features}, "
                f"out_features={self.out_features}, act={self.act!r}"
            )

    class quadraticLayer(hessQuikLayer):
        r""":math:`u v + \tfrac12 |uA^\top|^2 + \mu`; hessQuik's ``quadraticLayer``."""

        def __init__(self, in_features: int, rank: int, device=None, dtype=None, *, seed=None) -> None:
            super().__init__()
            self.in_features, self.rank = in_features, rank
            core = self._make_core(seed_from_torch(seed))
            self._adopt(core, ("v", "mu", "A"), device, dtype)
            self.__dict__["_core"] = core

        def _make_core(self, seed):
            return L.QuadraticLayer(self.in_features, self.rank, seed=seed)

        def dim_input(self) -> int:
            return self.in_features

        def dim_output(self) -> int:
            return 1

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, rank={self.rank}"

    class quadraticICNNLayer(hessQuikLayer):
        r"""Input-convex quadratic output layer; hessQuik's ``quadraticICNNLayer``."""

        def __init__(
            self, input_dim: int, in_features: int | None, rank: int, device=None, dtype=None, *, seed=None
        ) -> None:
            super().__init__()
            self.input_dim, self.in_features, self.rank = input_dim, in_features, rank
            self.nonneg = torch.nn.functional.softplus
            core = self._make_core(seed_from_torch(seed))
            self._adopt(core, ("w", "v", "mu", "A"), device, dtype)
            self.__dict__["_core"] = core

        def _make_core(self, seed):
            return L.QuadraticICNNLayer(self.input_dim, self.in_features, self.rank, seed=seed)

        def dim_input(self) -> int:
            return self.input_dim + (self.in_features or 0)

        def dim_output(self) -> int:
            return 1

        def extra_repr(self) -> str:
            return f"input_dim={self.input_dim}, in_features={self.in_features}, rank={self.rank}"

    # ---------------------------------------------------------------- networks
    def from_core(obj, device=None, dtype=None):
        """The compat module (layer or network) computing what the hessquik-core ``obj``
        does, with a copy of its weights (``dtype=None`` keeps their dtype)."""
        if isinstance(obj, _Block):
            return obj
        if isinstance(obj, N.NN):
            return NN(*(from_core(b, device, dtype) for b in obj.blocks))
        if not isinstance(obj, L.Layer):
            raise TypeError(f"expected a hessquik-core network or layer, got {type(obj).__name__}")
        cfg = dict(obj.config())
        families = (
            (L.ResnetLayer, resnetLayer, True),
            (L.SingleLayer, singleLayer, True),
            (L.ICNNLayer, ICNNLayer, True),
            (L.QuadraticICNNLayer, quadraticICNNLayer, False),
            (L.QuadraticLayer, quadraticLayer, False),
        )
        match = next((fam for fam in families if isinstance(obj, fam[0])), None)
        if match is None:
            raise TypeError(
                f"cannot convert {type(obj).__qualname__}: not one of hessquik-core's layer families"
            )
        _, cls, has_act = match
        if has_act:
            cfg["act"] = obj.act
        state = obj.state_dict()
        if dtype is None and state:
            dtype = str(next(iter(state.values())).dtype)
        mod = cls(**cfg, device=device, dtype=dtype, seed=0)
        mod.load_state_dict({k: as_tensor(v) for k, v in state.items()})
        return mod

    class NN(_Block, nn.Sequential):
        """Composition of compat layers and networks; hessQuik's ``NN(*layers)`` (an ``nn.Sequential``)."""

        _FORWARD_DEFAULT = None  # networks: forward iff d < m, as hessQuik's setup_forward_mode

        def __init__(self, *args) -> None:
            blocks = []
            for i, a in enumerate(args):
                if isinstance(a, (L.Layer, N.NN)):
                    a = from_core(a)  # hessquik-core layers and networks are accepted as well
                if not isinstance(a, _Block):
                    raise TypeError(f"block {i} must be a compat layer or network, got {type(a).__name__}")
                blocks.append(a)
            for i in range(1, len(blocks)):
                n_out, n_in = blocks[i - 1].dim_output(), blocks[i].dim_input()
                if n_out != n_in:
                    raise ValueError(
                        f"incompatible composition for block {i - 1} to block {i}: "
                        f"block {i - 1} has {n_out} outputs, block {i} takes {n_in} inputs"
                    )
            super().__init__(*blocks)

        def _core_tree(self):
            # rebuilt only when the blocks change (Sequential supports append, del, ...)
            blocks = tuple(b._core_tree() for b in self)
            cached = self.__dict__.get("_core_cache")
            if (
                cached is None
                or len(cached[0]) != len(blocks)
                or any(a is not b for a, b in zip(cached[0], blocks))
            ):
                cached = (blocks, N.NN(*blocks))
                self.__dict__["_core_cache"] = cached
            return cached[1]

        def dim_input(self) -> int:
            return self[0].dim_input()

        def dim_output(self) -> int:
            return self[-1].dim_output()

        def forward(
            self,
            x,
            do_gradient=False,
            do_Hessian=False,
            do_Laplacian=False,
            dudx=None,
            d2ud2x=None,
            v=None,
            **kwargs,
        ):
            """hessQuik's ``NN.forward``: as a layer's ``forward``, with ``forward_mode`` among ``kwargs``."""
            forward_mode = kwargs.pop("forward_mode", AUTO)
            flags = dict(
                do_gradient=do_gradient,
                do_Hessian=do_Hessian,
                do_Laplacian=do_Laplacian,
                dudx=dudx,
                d2ud2x=d2ud2x,
                v=v,
            )
            return self._run(x, flags, forward_mode, kwargs)

    def _rng(seed):
        return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed_from_torch(seed))

    class fullyConnectedNN(NN):
        """Single layers with widths ``[d, w1, ..., m]``; hessQuik's ``fullyConnectedNN`` (softplus)."""

        def __init__(self, widths, act=None, device=None, dtype=None, *, seed=None) -> None:
            widths = list(widths)
            if len(widths) < 2:
                raise ValueError(f"widths needs at least two entries (input and output), got {widths}")
            rng = _rng(seed)
            act = as_compat(act, "softplus")
            super().__init__(
                *(
                    singleLayer(widths[i], widths[i + 1], act=act, device=device, dtype=dtype, seed=rng)
                    for i in range(len(widths) - 1)
                )
            )
            self.widths = widths

    class resnetNN(NN):
        """``depth`` residual layers of constant ``width``; hessQuik's ``resnetNN`` (softplus)."""

        def __init__(
            self, width: int, depth: int, h: float = 1.0, act=None, device=None, dtype=None, *, seed=None
        ):
            if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
                raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
            rng = _rng(seed)
            act = as_compat(act, "softplus")
            super().__init__(
                *(
                    resnetLayer(width, h=h, act=act, device=device, dtype=dtype, seed=rng)
                    for _ in range(int(depth))
                )
            )
            self.width, self.depth, self.h = width, int(depth), h

    class ICNN(NN):
        """Input-convex network, ``widths = [None, w1, ...]``; hessQuik's ``ICNN`` (softplus)."""

        def __init__(self, input_dim: int, widths, act=None, device=None, dtype=None, *, seed=None) -> None:
            widths = list(widths)
            if len(widths) < 2:
                raise ValueError(f"widths needs at least two entries, e.g. [None, 16], got {widths}")
            rng = _rng(seed)
            act = as_compat(act, "softplus")
            super().__init__(
                *(
                    ICNNLayer(
                        input_dim, widths[i], widths[i + 1], act=act, device=device, dtype=dtype, seed=rng
                    )
                    for i in range(len(widths) - 1)
                )
            )
            self.input_dim, self.widths = input_dim, widths

    # ------------------------------------------------------- autograd wrappers
    def value_of(net, x):
        out = net(x)
        if hasattr(out, "value"):
            return out.value  # a hessquik-core network
        return out[0] if isinstance(out, tuple) else out

    class NNPytorchAD(nn.Module):
        """Derivatives of ``net`` by PyTorch's reverse-mode autograd (hessQuik's ``NNPytorchAD``).

        ``f(x, do_gradient=True, do_Hessian=True)`` evaluates ``net``'s value
        only and differentiates it with ``torch.autograd.grad`` (graphs kept),
        returning ``(f (n, m), df (n, d, m), d2f (n, d, d, m))``: an independent
        reference for the exact derivatives, through which ``loss.backward()``
        reaches ``net``'s parameters. ``net`` may be a compat module, a
        hessquik-core network (with torch parameters) or any module returning
        ``(f, ...)``. NumPy inputs give NumPy outputs; the caller's ``x`` is
        never modified (a leaf not requiring grad is differentiated through a
        detached alias).
        """

        def __init__(self, net) -> None:
            super().__init__()
            self.net = net

        def dim_input(self) -> int:
            return self.net.dim_input() if hasattr(self.net, "dim_input") else self.net.in_features

        def dim_output(self) -> int:
            return self.net.dim_output() if hasattr(self.net, "dim_output") else self.net.out_features

        def _check(self, f) -> None:
            pass

        def forward(self, x, do_gradient: bool = False, do_Hessian: bool = False, **kwargs):
            """``(f, df, d2f)`` of the wrapped network at ``x : (n, d)`` by torch autograd, as
            hessQuik's ``NNPytorchAD.forward`` (the graph is kept, so the outputs train)."""
            is_torch = isinstance(x, torch.Tensor)
            xt = x if is_torch else torch.from_numpy(np.array(x))
            want = bool(do_gradient or do_Hessian)
            keep_graph = torch.is_grad_enabled()
            if want and not xt.requires_grad:
                xt = xt.detach().requires_grad_(True)
            with torch.enable_grad() if want else nullcontext():
                f = value_of(self.net, xt)
                f = f.reshape(xt.shape[0], -1)
                self._check(f)
                df = d2f = None
                if want:
                    df = torch.stack([self._grad(f[:, j], xt) for j in range(f.shape[1])], dim=2)
                if do_Hessian:
                    n, d = xt.shape
                    # row i of sample s's Hessian of output j is the x-gradient of
                    # df[s, i, j]; summing over samples first is exact because
                    # sample s's output depends on row s of x only
                    d2f = torch.stack(
                        [
                            torch.stack([self._grad(df[:, i, j], xt) for i in range(d)], dim=1)
                            for j in range(f.shape[1])
                        ],
                        dim=3,
                    )
            out = (f, df, d2f)
            if not keep_graph:
                out = tuple(None if t is None else t.detach() for t in out)
            if is_torch:
                return out
            return tuple(None if t is None else t.detach().cpu().numpy() for t in out)

        @staticmethod
        def _grad(y, x):
            if not y.requires_grad:  # y does not depend on anything differentiable (e.g. linear net)
                return torch.zeros_like(x)
            (g,) = torch.autograd.grad(y.sum(), x, create_graph=True, allow_unused=True)
            return torch.zeros_like(x) if g is None else g

    class NNPytorchHessian(NNPytorchAD):
        """As :class:`NNPytorchAD`, for networks with one output only (hessQuik's ``NNPytorchHessian``)."""

        def _check(self, f) -> None:
            if f.shape[1] != 1:
                raise ValueError(
                    f"NNPytorchHessian needs a network with scalar output (one output feature), "
                    f"got {f.shape[1]} outputs"
                )

    classes = {
        "_Block": _Block,
        "hessQuikLayer": hessQuikLayer,
        "singleLayer": singleLayer,
        "resnetLayer": resnetLayer,
        "ICNNLayer": ICNNLayer,
        "quadraticLayer": quadraticLayer,
        "quadraticICNNLayer": quadraticICNNLayer,
        "NN": NN,
        "fullyConnectedNN": fullyConnectedNN,
        "resnetNN": resnetNN,
        "ICNN": ICNN,
        "NNPytorchAD": NNPytorchAD,
        "NNPytorchHessian": NNPytorchHessian,
        "from_core": from_core,
    }
    for name, obj in classes.items():
        obj.__module__ = "hessquik_core.compat." + ("networks" if name in NETWORK_NAMES else "layers")
        obj.__qualname__ = name  # pickle / torch.save of a whole module finds them there
    return classes
