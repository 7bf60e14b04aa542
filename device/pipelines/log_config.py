"""The config of a log-anomaly pipeline (one ``[pipelines.NAME]`` table with this task).

Kept apart from device/config.py's other models so that the config module can import it
without importing the pipeline (and numpy, and the runtime) at load time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class LogAnomalyPipelineConfig(BaseModel):
    """What a user may set for a log-anomaly pipeline; everything else comes from the bundle.

    Values left unset take the bundle's (its ``decoding``): a value the user wrote beats
    one the model shipped with, as for image thresholds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Literal["log-anomaly"] = "log-anomaly"
    #: A configured log source (files, journal or syslog).
    source: str = Field(pattern=NAME_PATTERN)
    #: The bundle (.ewm) of a log-anomaly model trained on lines (not sessions).
    model: Path
    #: An event is anomalous when its template is not among the model's ``top_g`` best
    #: guesses; larger is more tolerant. None: the bundle's value.
    top_g: int | None = Field(None, ge=1)
    #: Also anomalous when the model gives the event less than this probability
    #: (0 turns it off). None: the bundle's value.
    min_probability: float | None = Field(None, ge=0.0, le=1.0)
    #: Check numeric parameters against the ranges seen in training (when the bundle
    #: holds any).
    parameter_checks: bool = True
    #: Whose lines form one sequence: each origin (file, journal, syslog peer) on its own;
    #: each origin and program (the syslog tag or journal identifier, where the line has
    #: one: a host's syslog or journal interleaves many programs); or the whole source.
    history_key: Literal["origin", "app", "source"] = "origin"
    #: Most histories scored in one model invocation.
    batch_size: int = Field(256, ge=1, le=8192)
    #: Scores remembered per (history, next template), and model outputs per history.
    cache_entries: int = Field(100_000, ge=0, le=10_000_000)
    #: Origins whose history is kept (the oldest is forgotten beyond this).
    max_origins: int = Field(1024, ge=1, le=1_000_000)
    #: Anomalies reported per second at most (a burst beyond it is counted, not
    #: reported); 0: no limit.
    max_reports_per_s: float = Field(20.0, ge=0.0)
    #: Anomalies a burst may report at once before ``max_reports_per_s`` applies.
    report_burst: int = Field(100, ge=1)
