"""The `tracking` block: where a run's epochs and results also go, besides its run folder
(bigmodel_ray/tracking.py sends them; the run folder stays the record)."""

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from bigmodel_ray.spec.common import Section

# What MLflow's client opens; `+driver` suffixes (postgresql+psycopg2) are SQLAlchemy's.
MLFLOW_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")


class MlflowSpec(Section):
    uri: str | None = Field(None, min_length=1, max_length=2048,
                            description="tracking server (http(s)://HOST:PORT) or store (file:/PATH, sqlite:///FILE); "
                                        "default: $MLFLOW_TRACKING_URI. No credentials here: MLflow reads "
                                        "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")
    experiment: str = Field("Default", min_length=1, max_length=500,
                            description="MLflow experiment the runs go into (made if missing)")

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, v):
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme.split("+")[0] not in MLFLOW_SCHEMES:
            raise ValueError(f"must be a URI with one of the schemes {' | '.join(MLFLOW_SCHEMES)}")
        # The job file is copied into the run folder and logged as an artifact: a secret here leaks.
        if parts.password is not None or (parts.username is not None and parts.scheme.startswith("http")):
            raise ValueError("must not hold credentials (they would be saved with the run); set "
                             "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")
        return v


class TrackingSpec(Section):
    """Metrics per epoch (step = epoch) and the results at the end, for runs and sweeps. Only
    the driver talks to the tracking server; when it cannot, the run warns once and goes on."""
    tensorboard: bool = Field(False, description="write TensorBoard event files into the run folder's `tensorboard/` "
                                                 "(a sweep: one folder per trial in it)")
    mlflow: MlflowSpec | None = Field(None, description="one MLflow run per run, named after the job, with the spec "
                                                        "as params and the run folder's files as artifacts; a sweep: "
                                                        "a parent run and one child run per trial "
                                                        "(pip install 'bigmodel-ray[tracking]')")
