"""atoll: run ML and LLM workflows on a hybrid, geo-distributed GPU fleet at least cost.

The SDK entry point is :class:`atoll.Client` (imported lazily so that ``import atoll`` stays
cheap and does not pull in gRPC for users of the planner or the runtime alone).
"""

__version__ = "0.1.0"

__all__ = ["Client", "__version__"]


def __getattr__(name):  # PEP 562: lazy import of the SDK
    if name == "Client":
        from atoll.client import Client

        return Client
    raise AttributeError(f"module 'atoll' has no attribute {name!r}")
