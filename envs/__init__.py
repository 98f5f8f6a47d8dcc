"""Simulated cluster and the Gymnasium environments; importing the package registers them."""

from gymnasium.envs.registration import register, registry

from core.observation import ENV_ID

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="envs.scaling_env:ConcurrencyScalingEnv")

__all__ = ["ENV_ID"]
