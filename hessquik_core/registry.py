"""The network registry: the network classes ``hq.save`` / ``hq.load`` know by name.

Networks register like layers (:func:`~hessquik_core.layers.register_layer`)
and activations (:func:`~hessquik_core.activations.register_activation`): a
file stores a network as its class name and its blocks, and ``load`` rebuilds
it with the class's ``from_blocks`` (the ``NN`` subclasses differ only in their
constructor arguments), so :mod:`hessquik_core.io` needs no class table. The
registry sits below :mod:`hessquik_core.networks`, which registers ``NN``,
``FullyConnectedNN``, ``ResnetNN`` and ``ICNN``; :mod:`hessquik_core.compat`
registers the names its classes had in older files (``"compat.NN"``, ...).
"""

from __future__ import annotations

from ._module import Module

__all__ = ["NETWORKS", "NETWORK_ALIASES", "register_network", "register_network_alias"]

#: file-format name -> network class (:func:`register_network`); ``hq.save`` writes these names
NETWORKS: dict[str, type] = {}
#: further names older files use for a registered network (``"compat.NN"``), read by ``hq.load``
NETWORK_ALIASES: dict[str, type] = {}


def register_network(cls: type) -> type:
    """Class decorator: make a network class (``NN`` or a subclass) known to
    ``hq.save`` / ``hq.load`` by its class name."""
    if not (
        isinstance(cls, type) and issubclass(cls, Module) and callable(getattr(cls, "from_blocks", None))
    ):
        raise TypeError(f"register_network expects an NN subclass, got {cls!r}")
    if NETWORKS.get(cls.__name__, cls) is not cls:
        raise ValueError(f"a network named {cls.__name__!r} is already registered: {NETWORKS[cls.__name__]}")
    NETWORKS[cls.__name__] = cls
    return cls


def register_network_alias(name: str, cls: type) -> None:
    """Let files naming a network ``name`` load as the registered network ``cls``."""
    if cls not in NETWORKS.values():
        raise ValueError(f"{cls!r} is not a registered network")
    NETWORK_ALIASES[name] = cls
