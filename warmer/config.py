"""The warmer's settings as its parts take them (the proxy builds them from its
configuration; the replay from the same configuration, or from its defaults).

Plain frozen data, no imports of the heavy parts, so the replay can read a
configuration without loading the live runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from warmer.alerts import AlertThresholds
from warmer.audience import AudienceConfig
from warmer.precision import DEFAULT_MIN_PRECISION
from warmer.predictive import PredictiveConfig

__all__ = ["MonitoringConfig", "ReactiveConfig", "WarmerConfig"]


@dataclass(frozen=True, slots=True)
class ReactiveConfig:
    enabled: bool = True
    auto_warm: bool = True
    threshold: int = 10
    time_window: float = 3600.0
    refresh_ahead: bool = True
    refresh_min_hits: int = 2
    refresh_fraction: float = 0.1
    max_tracked_keys: int = 10_000
    # The least precision a class of decisions keeps warming at (see
    # warmer.precision); raised on its own to the measured break-even.
    min_precision: float = DEFAULT_MIN_PRECISION


@dataclass(frozen=True, slots=True)
class MonitoringConfig:
    track_effectiveness: bool = True
    interval: float = 15.0  # seconds between alert evaluations
    max_tracked: int = 100_000
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)


@dataclass(frozen=True, slots=True)
class WarmerConfig:
    """The warmer's settings, taken from the proxy's configuration by the app."""

    levels: tuple[str, ...] = ("high", "medium", "low")
    proactive_enabled: bool = True
    reactive: ReactiveConfig = field(default_factory=ReactiveConfig)
    predictive: PredictiveConfig = field(default_factory=PredictiveConfig)
    retrain_schedule: str = "0 * * * *"
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    # "off", "propose" or "apply": schedule optimization (see optimizer.py).
    optimize: str = "propose"
    # Paths per second warming can achieve at most (the origin rate limit).
    fill_rate: float = 50.0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    hot_top_n: int = 100
    # The usage analysis of hot-data (trends, seasonality, segments, sequences).
    analysis: bool = True
    # What the usage tracker keeps: its sliding windows, hot keys, known URLs.
    windows: tuple[float, ...] = (60.0, 3600.0, 86400.0)
    top_k: int = 1000
    max_known_urls: int = 100_000
    # Which hosts and variants of a key warm fetches are made for.
    audience: AudienceConfig = field(default_factory=AudienceConfig)
