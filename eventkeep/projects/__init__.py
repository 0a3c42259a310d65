"""Projects and their credentials: tokens, API secrets and service accounts."""

from eventkeep.projects.model import Project, ServiceAccount
from eventkeep.projects.registry import ProjectRegistry

__all__ = ["Project", "ProjectRegistry", "ServiceAccount"]
