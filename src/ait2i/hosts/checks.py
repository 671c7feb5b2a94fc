"""The host registry: which adapter drives which pipeline class."""

from __future__ import annotations

from .base import Host

_HOSTS: list[type[Host]] = []


def register_host(host: type[Host]) -> type[Host]:
    """Register a host adapter class (usable as a decorator); later registrations are tried first."""
    if not (isinstance(host, type) and issubclass(host, Host)) or not host.pipelines:
        raise TypeError(f"{host!r} is not a Host subclass naming its pipelines")
    _HOSTS.insert(0, host)
    return host


def supported_pipelines() -> list[str]:
    """Names of every pipeline class some registered host drives."""
    return sorted({name for h in _HOSTS for name in h.pipelines})


def host_for(pipe) -> type[Host]:
    """The adapter class that drives ``pipe``.

    Raises:
        TypeError: no registered adapter drives this pipeline class; the message lists the supported ones.
    """
    cls = type(pipe)
    # The most specific class first: a host of a subclass wins over a host of its base class.
    for klass in cls.__mro__:
        for host in _HOSTS:
            if klass.__name__ in host.pipelines:
                if any("__call__" in vars(k) for k in cls.__mro__[: cls.__mro__.index(klass)]):
                    raise TypeError(
                        f"{cls.__name__} subclasses {klass.__name__} but overrides __call__, so its denoising loop "
                        f"may differ from the one {host.__name__} drives; not supported. Supported pipelines: "
                        f"{', '.join(supported_pipelines())}"
                    )
                return host
    raise TypeError(f"{cls.__name__} is not supported; supported pipelines: {', '.join(supported_pipelines())}")


def host_named(pipeline_class: str) -> type[Host] | None:
    """The adapter class of the pipeline class named ``pipeline_class`` (e.g. a folder's ``_class_name``), if any."""
    return next((h for h in _HOSTS if pipeline_class in h.pipelines), None)
