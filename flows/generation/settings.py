"""Generation settings from the environment and `.env`."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    @property
    def job_timeout(self) -> timedelta:
        return timedelta(seconds=self.job_timeout_s)

    @property
    def hold_timeout(self) -> timedelta:
        """Longer than the job may run, so a hold expires only when recovery failed too."""
        return timedelta(seconds=self.job_timeout_s * 2 + 300)
