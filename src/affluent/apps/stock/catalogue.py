"""What the stores sell and where they are: products, thresholds, shelves, seasons, stores.

The ten products and their alert thresholds are StockNow's, so that alerts mean what they meant
there: a shelf is in alert when its quantity is below the product's threshold.

>>> THRESHOLDS["GTA6"], SHELVES["ski"]
(2, 'shelf-1')
>>> season_of_month(1), season_of_month(4), season_of_month(7), season_of_month(10)
('winter', 'spring', 'summer', 'autumn')
>>> sorted(SEASONAL_PRODUCTS["summer"])
['crème solaire', 'maillot de bain']
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

#: product -> alert threshold (alert when quantity < threshold)
THRESHOLDS: dict[str, int] = {
    "ski": 3,
    "doudoune": 4,
    "pull": 4,
    "maillot de bain": 4,
    "t-shirt": 4,
    "crème solaire": 4,
    "parapluie": 3,
    "GTA6": 2,
    "coca": 4,
    "papier toilette": 4,
}
PRODUCTS: tuple[str, ...] = tuple(THRESHOLDS)

#: which shelf sensor (shelf-1..4) weighs each product
SHELVES: dict[str, str] = {
    "ski": "shelf-1",
    "doudoune": "shelf-1",
    "pull": "shelf-1",
    "maillot de bain": "shelf-2",
    "t-shirt": "shelf-2",
    "crème solaire": "shelf-2",
    "parapluie": "shelf-3",
    "GTA6": "shelf-3",
    "coca": "shelf-4",
    "papier toilette": "shelf-4",
}

#: restock target: a request asks for 3 × threshold − quantity
RESTOCK_TARGET_FACTOR = 3

SEASON_MONTHS: dict[str, tuple[int, ...]] = {
    "winter": (12, 1, 2),
    "spring": (3, 4, 5),
    "summer": (6, 7, 8),
    "autumn": (9, 10, 11),
}
#: products whose restock is high priority in each season
SEASONAL_PRODUCTS: dict[str, frozenset[str]] = {
    "winter": frozenset({"ski", "doudoune"}),
    "spring": frozenset({"t-shirt"}),
    "summer": frozenset({"maillot de bain", "crème solaire"}),
    "autumn": frozenset({"parapluie", "pull"}),
}
_SEASON_BY_MONTH = {m: s for s, months in SEASON_MONTHS.items() for m in months}


def season_of_month(month: int) -> str:
    return _SEASON_BY_MONTH[month]


def slug(text: str) -> str:
    """Lowercase ASCII id for MQTT topic levels and device ids: 'crème solaire' -> 'creme-solaire'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "-".join(ascii_text.lower().split())


@dataclass(frozen=True, slots=True)
class Store:
    store_id: str
    lat: float
    lon: float
    #: how much it sells compared with an average store
    size: float = 1.0
    #: local taste: product -> sales multiplier (skis sell in the Alps, sun cream by the sea)
    affinity: dict[str, float] = field(default_factory=dict)

    def location(self) -> dict[str, object]:
        return {"store": self.store_id, "lat": self.lat, "lon": self.lon}


#: the first store is StockNow's single store, paris-12
STORES: tuple[Store, ...] = (
    Store("paris-12", 48.85, 2.34, 1.4),
    Store("lyon-2", 45.76, 4.83, 1.1),
    Store("marseille-1", 43.30, 5.37, 1.0, {"crème solaire": 1.6, "maillot de bain": 1.5, "parapluie": 0.5}),
    Store("brest-1", 48.39, -4.49, 0.8, {"parapluie": 2.0, "crème solaire": 0.6}),
    Store("grenoble-1", 45.19, 5.72, 0.9, {"ski": 2.5, "doudoune": 1.5}),
    Store("lille-1", 50.63, 3.06, 0.9, {"parapluie": 1.5, "pull": 1.3}),
    Store("bordeaux-1", 44.84, -0.58, 1.0),
    Store("nice-1", 43.70, 7.27, 0.9, {"crème solaire": 1.5, "maillot de bain": 1.5}),
)


def stores(count: int) -> tuple[Store, ...]:
    """The first `count` stores; beyond the named ones, numbered stores around France's centre."""
    if count < 1:
        raise ValueError(f"at least one store is needed, not {count}")
    if count <= len(STORES):
        return STORES[:count]
    extra = tuple(
        Store(f"store-{i + 1}", round(46.5 + ((i * 37) % 40 - 20) / 10, 4), round(2.5 + ((i * 53) % 60 - 30) / 10, 4), 1.0) for i in range(len(STORES), count)
    )
    return STORES + extra
