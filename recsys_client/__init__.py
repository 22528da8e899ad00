"""Python client of the recommender suite: typed calls to the gateway with deadlines, safe retries, request ids
and typed errors (`RecsysClient`, `AsyncRecsysClient`), and the operators' reads (`AsyncOperatorClient`)."""

from recsys_client.client import AsyncRecsysClient, RecsysClient
from recsys_client.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RecsysError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from recsys_client.operator import AsyncOperatorClient
from recsys_client.types import (
    Boost,
    CatalogItem,
    Event,
    Explanation,
    Filter,
    Pin,
    Recommendations,
    RecommendedItem,
    RecordResult,
    SearchResults,
    SimilarItems,
    UpsertResult,
)

__all__ = [
    "AsyncOperatorClient",
    "AsyncRecsysClient",
    "Boost",
    "CatalogItem",
    "DeadlineExceededError",
    "Event",
    "Explanation",
    "Filter",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "Pin",
    "Recommendations",
    "RecommendedItem",
    "RecordResult",
    "RecsysClient",
    "RecsysError",
    "ResourceExhaustedError",
    "SearchResults",
    "SimilarItems",
    "UnauthenticatedError",
    "UnavailableError",
    "UpsertResult",
]
