"""The registry edge: the HTTP client for ClinicalTrials.gov API v2 and a faithful local fake."""

from pipeline.registry.client import DEFAULT_API_URL, RegistryClient, StudySource
from pipeline.registry.pages import Page

__all__ = ["DEFAULT_API_URL", "Page", "RegistryClient", "StudySource"]
