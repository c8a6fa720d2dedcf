"""France Travail "Offres d'emploi v2": the API client, the offers source, the referentials, offer normalisation."""

from __future__ import annotations

from affluent.sources.france_travail.client import (
    API_URL,
    TOKEN_URL,
    CredentialsError,
    FranceTravailClient,
    FranceTravailError,
    Page,
    TokenBucket,
    parse_content_range,
)
from affluent.sources.france_travail.offers import BadOfferError, normalize_offer, offer_time_ms, paris_day, parse_api_time_ms
from affluent.sources.france_travail.referentials import Referentials
from affluent.sources.france_travail.source import FranceTravailReplaySource, FranceTravailSource, api_time

__all__ = [
    "API_URL",
    "TOKEN_URL",
    "BadOfferError",
    "CredentialsError",
    "FranceTravailClient",
    "FranceTravailError",
    "FranceTravailReplaySource",
    "FranceTravailSource",
    "Page",
    "Referentials",
    "TokenBucket",
    "api_time",
    "normalize_offer",
    "offer_time_ms",
    "paris_day",
    "parse_api_time_ms",
    "parse_content_range",
]
