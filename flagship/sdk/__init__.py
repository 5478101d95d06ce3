"""The flagship Python SDK: local evaluation of polled snapshots with the server's own core.

`Client` needs only the standard library and the evaluation core; the OpenFeature
provider (`flagship.sdk.openfeature`) needs the optional `openfeature-sdk` package.
"""
from flagship.flags.evaluate import Evaluation
from flagship.sdk.client import PROVIDER_FATAL, PROVIDER_NOT_READY, Client, Resolved
from flagship.sdk.snapshots import ERROR, FATAL, NOT_READY, READY, STALE, ClientEvent

__all__ = ["Client", "ClientEvent", "Evaluation", "Resolved", "NOT_READY", "READY", "STALE",
           "ERROR", "FATAL", "PROVIDER_NOT_READY", "PROVIDER_FATAL"]
