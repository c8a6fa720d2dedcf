"""Settings: arguments, then `AFFLUENT__SECTION__KEY` env vars, then `.env`, then `affluent.toml`, then defaults.

Only this module and `cli/` read the environment. Secrets are SecretStr: never logged or printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


class LogSettings(BaseModel):
    #: sqlite:///path (embedded) or kafka://host:9092
    url: str = "sqlite:///.affluent/affluent.db"
    #: NORMAL survives process crashes; FULL also survives power loss, at a cost
    synchronous: str = "NORMAL"


class LakeSettings(BaseModel):
    #: parquet://folder (local) ; s3://bucket/prefix later
    url: str = "parquet://.affluent/lake"


class ServingSettings(BaseModel):
    #: sqlite:///file (embedded, in WAL mode: other processes read it while pipelines write it)
    url: str = "sqlite:///.affluent/serving.db"


class StockSettings(BaseModel):
    seed: int | None = None
    period_s: float = 2.0
    stores: int = 3
    #: the stores' local time zone: seasons of restock requests, hours and days of the analysis
    timezone: str = "Europe/Paris"
    #: "simulator" or an MQTT URL such as mqtt://127.0.0.1:1883
    source: str = "simulator"
    #: simulated clock: 1 = real pace, N = N times faster, "inf" = as fast as possible
    speed: float = 1.0
    #: simulated period, ISO dates or datetimes (start default: now, or 7 days ago when accelerated)
    start: str | None = None
    end: str | None = None
    mqtt_topic: str = "wh/+/+/stock-sensor/+/telemetry"
    #: reading ids remembered per device to drop MQTT QoS 1 redeliveries
    redelivery_window: int = 64
    #: the lake pipeline commits (writes Parquet files) this often
    lake_commit_s: float = 30.0


class BikesSettings(BaseModel):
    #: a GBFS discovery URL (gbfs.json), or a System ID of `affluent bikes systems`
    feed: str = "https://gbfs.partners.fifteen.eu/gbfs/2.2/brest/en/gbfs.json"
    #: never poll a feed file faster than this, whatever its ttl
    min_poll_s: float = 30.0
    timeout_s: float = 10.0
    #: at startup, how long to wait for the feed before replaying the bundled recording instead
    probe_timeout_s: float = 3.0
    #: replay the bundled VéloZef recording when the feed cannot be reached at startup
    fallback_to_recording: bool = True
    #: pace of the recording when replayed: 1 = real pace, N = N times faster
    replay_speed: float = 1.0
    #: preferred feed language for v1/v2 systems (default: en, else the first listed)
    language: str | None = None
    #: day boundaries of `affluent analyze bikes` when system_information gives no time zone
    timezone: str = "Europe/Paris"
    #: the lake pipeline commits (writes Parquet files) this often
    lake_commit_s: float = 30.0
    #: MobilityData's catalogue of public GBFS systems, refreshed from here when online (cached a day)
    catalog_url: str = "https://raw.githubusercontent.com/MobilityData/gbfs/master/systems.csv"


class WebSettings(BaseModel):
    #: the dashboard listens here; another address than loopback exposes it to the network
    host: str = "127.0.0.1"
    port: int = 8000
    #: background map tiles, loaded by browsers only when affluent is online ("" turns them off)
    tiles_url: str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    tiles_attribution: str = "© OpenStreetMap contributors"
    #: how often live updates look for new data (the log's offsets, the serving store's version)
    live_interval_s: float = 0.2


class JobsSettings(BaseModel):
    #: the OAuth2 token endpoint (realm /partenaire) and the Offres d'emploi API base: a mirror or a test server may stand in
    token_url: str = "https://entreprise.francetravail.fr/connexion/oauth2/access_token?realm=%2Fpartenaire"
    api_url: str = "https://api.francetravail.io/partenaire/offresdemploi"
    #: requests per second, token requests included (0: no limit, for a mirror); the API allows a few per application
    rate_per_s: Annotated[float, Field(ge=0)] = 3.0
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    #: on a first start, the backfill begins this many hours ago (`affluent run jobs --since` sets a date)
    since_hours: Annotated[float, Field(gt=0)] = 24.0
    #: once backfilled, a new search every interval_s, overlapping the last one by overlap_s (the index lags creation)
    interval_s: Annotated[float, Field(ge=1)] = 60.0
    overlap_s: Annotated[float, Field(ge=0)] = 300.0
    #: every refresh_interval_s, the offers created in the last refresh_hours are searched again for updates (0: never)
    refresh_hours: Annotated[float, Field(ge=0)] = 48.0
    refresh_interval_s: Annotated[float, Field(ge=60)] = 3600.0
    #: at startup, how long to wait for a token before replaying the bundled recording instead
    probe_timeout_s: float = 10.0
    #: replay the bundled recording when the API cannot be reached or refuses the credentials at startup
    fallback_to_recording: bool = True
    #: pace of the recording when replayed: 1 = real pace, N = N times faster
    replay_speed: float = 1.0
    #: the referentials fetched from the API are kept in the data folder and fetched again after this many days
    referentials_max_age_days: float = 7.0
    #: how long after its creation an offer's versions are remembered (updates are seen within the poll overlap)
    state_days: float = 8.0
    #: days of offers and counts the serving store keeps (the lake keeps everything)
    serving_days: float = 31.0
    #: the lake pipeline commits (writes Parquet files) this often
    lake_commit_s: float = 30.0


class CryptoSettings(BaseModel):
    #: the markets' APIs: a mirror or a test server may stand in
    coingecko_url: str = "https://api.coingecko.com/api/v3"
    binance_ws_url: str = "wss://stream.binance.com:9443"
    binance_rest_url: str = "https://api.binance.com"
    #: the top N coins by market cap, priced in this currency, polled every interval_s
    top: Annotated[int, Field(ge=1, le=1000)] = 100
    vs_currency: str = "usd"
    interval_s: Annotated[float, Field(ge=5)] = 30.0
    #: the 7-day hourly sparkline (the forecasts' input) is asked for this often
    sparkline_every_s: Annotated[float, Field(ge=60)] = 3600.0
    #: the pairs whose trades are followed (default: ten of the largest USDT pairs)
    symbols: list[str] = Field(
        default_factory=lambda: ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "TRXUSDT", "AVAXUSDT", "LINKUSDT"]
    )
    #: a trade this late after its minute still updates its candle; later, it is counted and set aside
    grace_s: Annotated[float, Field(ge=0)] = 10.0
    #: an anomaly: a 1-minute return this many standard deviations from the symbol's recent ones
    anomaly_z: Annotated[float, Field(gt=0)] = 4.0
    #: returns the model learns before it may alert, and the span (minutes) of its moving mean and variance
    anomaly_warmup: Annotated[int, Field(ge=2)] = 30
    anomaly_span: Annotated[int, Field(ge=2)] = 60
    timeout_s: Annotated[float, Field(gt=0)] = 10.0
    #: at startup, how long to wait for each API before replaying the bundled recording instead
    probe_timeout_s: float = 3.0
    fallback_to_recording: bool = True
    #: pace of the recording when replayed: 1 = real pace, N = N times faster
    replay_speed: float = 1.0
    #: days of candles, alerts and forecasts the serving store keeps (the lake keeps the market snapshots)
    serving_days: float = 7.0
    #: the lake pipeline commits (writes Parquet files) this often
    lake_commit_s: float = 30.0
    #: an Elasticsearch URL (http://user:password@host:9200) to index the market snapshots into too (extra `elasticsearch`)
    elasticsearch_url: SecretStr | None = None
    elasticsearch_index: str = "crypto-markets"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AFFLUENT__",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        toml_file="affluent.toml",
    )

    data_dir: Path = Path(".affluent")
    #: force offline mode (recorded replays and simulators) even when the network is reachable
    offline: bool = False
    #: a live record timed further ahead of the wall clock is a dead letter (publishers' clocks drift a little)
    max_event_ahead_s: float = 300.0
    log: LogSettings = Field(default_factory=LogSettings)
    lake: LakeSettings = Field(default_factory=LakeSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    stock: StockSettings = Field(default_factory=StockSettings)
    bikes: BikesSettings = Field(default_factory=BikesSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    crypto: CryptoSettings = Field(default_factory=CryptoSettings)
    #: France Travail API credentials (francetravail.io, an application with access to "Offres d'emploi v2")
    france_travail_client_id: str | None = Field(None, validation_alias=AliasChoices("france_travail_client_id", "FRANCE_TRAVAIL_CLIENT_ID"))
    france_travail_client_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("france_travail_client_secret", "FRANCE_TRAVAIL_CLIENT_SECRET"))

    #: optional API keys: a CoinGecko Demo or Pro key, a Binance key (neither is needed)
    coingecko_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("coingecko_api_key", "COINGECKO_API_KEY"))
    binance_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("binance_api_key", "BINANCE_API_KEY"))

    @property
    def max_event_ahead_ms(self) -> int:
        return int(self.max_event_ahead_s * 1000)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, TomlConfigSettingsSource(settings_cls), file_secret_settings)


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


def lake_path(settings: Settings) -> Path:
    url = settings.lake.url
    if not url.startswith("parquet://"):
        from affluent.core.errors import ConfigError

        raise ConfigError(f"lake URL {url!r} is not supported yet: use parquet://folder")
    return Path(url.removeprefix("parquet://"))


def serving_path(settings: Settings) -> Path:
    url = settings.serving.url
    path = url.removeprefix("sqlite:///")
    if not path or path == url:
        from affluent.core.errors import ConfigError

        raise ConfigError(f"serving URL {url!r} is not supported yet: use sqlite:///path/to/serving.db")
    return Path(path)
