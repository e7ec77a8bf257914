"""fedlora on Flower: ClientApp/ServerApp around the package's local update and aggregation,
local simulation and deployment (SuperLink + SuperNodes on 127.0.0.1, TLS, node auth).

Importing this package switches Flower's telemetry, update checks and Ray usage stats off.
The apps themselves live in `fedlora.flower.client_app` and `fedlora.flower.server_app`.
"""
from fedlora.flower.deploy import QUIET_ENV, apply_quiet_env

apply_quiet_env()

__all__ = ["QUIET_ENV", "apply_quiet_env"]
