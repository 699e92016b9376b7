"""Generation settings from the environment and `.env`."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flows.generation.fetch_policy import FetchPolicy


class GenerationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    # No key: `make run` and tests use the local fake KIE server.
    kie_api_key: str | None = Field(default=None, alias="KIE_API_KEY")
    kie_base_url: str = Field(default="https://api.kie.ai", alias="KIE_BASE_URL")
    # Where KIE can reach our callbacks; none: results are found by polling only.
    public_base_url: str | None = Field(default=None, alias="PUBLIC_BASE_URL")
    kie_callback_hmac_key: str | None = Field(default=None, alias="KIE_CALLBACK_HMAC_KEY")
    free_daily_limit: int = Field(default=5, alias="FREE_DAILY_LIMIT", ge=0)
    job_timeout_s: float = Field(default=900, alias="JOB_TIMEOUT_S", gt=0)
    poll_interval_s: float = Field(default=3, alias="POLL_INTERVAL_S", gt=0)
    poll_max_interval_s: float = Field(default=30, alias="POLL_MAX_INTERVAL_S", gt=0)
    sweep_interval_s: float = Field(default=15, alias="SWEEP_INTERVAL_S", gt=0)
    # How long one sender holds a result's delivery: longer than every timeout inside it
    # (download, upload, link), and short enough that a crashed sender's result is sent
    # again soon. Well below the hold timeout, so a retried delivery is still charged.
    delivery_lease_s: float = Field(default=300, alias="DELIVERY_LEASE_S", gt=0)
    # Comma-separated hosts, IP addresses or networks that result files may be downloaded
    # from although they are not public (flows.generation.safe_fetch). Empty in
    # production; `trt run` and the tests add their local fake KIE.
    result_fetch_allow: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), alias="RESULT_FETCH_ALLOW"
    )

    @field_validator("result_fetch_allow", mode="before")
    @classmethod
    def _split(cls, raw: object) -> object:
        if isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw

    @field_validator("result_fetch_allow")
    @classmethod
    def _valid_entries(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        FetchPolicy.from_entries(entries)  # ValueError names a bad entry
        return entries

    @property
    def fetch_policy(self) -> FetchPolicy:
        """What result downloads may reach: the public internet and RESULT_FETCH_ALLOW."""
        return FetchPolicy.from_entries(self.result_fetch_allow)

    @property
    def job_timeout(self) -> timedelta:
        return timedelta(seconds=self.job_timeout_s)

    @property
    def hold_timeout(self) -> timedelta:
        """Longer than the job may run, so a hold expires only when recovery failed too."""
        return timedelta(seconds=self.job_timeout_s * 2 + 300)
