"""`from augment_adam.ai_agent.models import ModelManager`: the seed's path to Dukat's ModelManager."""

from gateway.manager import ModelManager

__all__ = ["ModelManager"]
