"""`from augment_adam.ai_agent.models import ModelManager`: the seed's path to Dukat's ModelManager."""

from gateway.seed_api import ModelManager

__all__ = ["ModelManager"]
