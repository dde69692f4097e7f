"""cdc-service: streaming Change Data Capture from Kafka to Delta SCD2 dimensions."""

__all__ = ["__version__"]

__version__ = "0.1.0"
