"""Settings: arguments, then `AFFLUENT__SECTION__KEY` env vars, then `.env`, then `affluent.toml`, then defaults.

Only this module and `cli/` read the environment. Secrets are SecretStr: never logged or printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr
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
    #: duckdb:///file
    url: str = "duckdb:///.affluent/serving.duckdb"


class StockSettings(BaseModel):
    seed: int | None = None
    period_s: float = 2.0
    stores: int = 3
    timezone: str = "Europe/Paris"
    #: "simulator" or an MQTT URL such as mqtt://127.0.0.1:1883
    source: str = "simulator"


class BikesSettings(BaseModel):
    feed: str = "https://gbfs.partners.fifteen.eu/gbfs/2.2/brest/en/gbfs.json"
    min_poll_s: float = 30.0
    timeout_s: float = 10.0


class FranceTravailSettings(BaseModel):
    client_id: str | None = None
    client_secret: SecretStr | None = None


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
    log: LogSettings = Field(default_factory=LogSettings)
    lake: LakeSettings = Field(default_factory=LakeSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    stock: StockSettings = Field(default_factory=StockSettings)
    bikes: BikesSettings = Field(default_factory=BikesSettings)
    france_travail: FranceTravailSettings = Field(default_factory=FranceTravailSettings)

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
    if not url.startswith("duckdb:///"):
        from affluent.core.errors import ConfigError

        raise ConfigError(f"serving URL {url!r} is not supported yet: use duckdb:///file")
    return Path(url.removeprefix("duckdb:///"))
