"""librdkafka settings translated for the Java Kafka client (what Spark's Kafka source takes).

``kafka.client`` is written once, in librdkafka's names (the service's own consumers and
producers use confluent-kafka); the Java client of Spark's source and of the OpenLineage
Kafka transport gets the same connection through :func:`java_client_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cdc.errors import ConfigError

__all__ = ["java_client_config"]

_SASL_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
_LIBRDKAFKA_ONLY = frozenset(
    {
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.key.password",
    }
)


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def java_client_config(librdkafka: Mapping[str, str]) -> dict[str, str]:
    """Translate librdkafka settings into the Java client's (what Spark's Kafka source takes).

    Names both clients share pass through; SASL user/password become ``sasl.jaas.config``
    (PLAIN, SCRAM-SHA-256/512) and PEM file locations become the Java client's PEM trust and
    key stores, whose contents are read here.

    Args:
        librdkafka: resolved librdkafka settings.

    Returns:
        Java client settings (without the ``kafka.`` prefix Spark's options put before them).

    Raises:
        ConfigError: a setting has no Java equivalent this function knows (name it in
            ``kafka.java_client`` instead) or a PEM file cannot be read.
    """
    java = {k: v for k, v in librdkafka.items() if k not in _LIBRDKAFKA_ONLY}
    mechanism = librdkafka.get("sasl.mechanism") or librdkafka.get("sasl.mechanisms")
    if mechanism:
        java["sasl.mechanism"] = mechanism
    if "sasl.username" in librdkafka or "sasl.password" in librdkafka:
        module = _SASL_LOGIN_MODULES.get((mechanism or "PLAIN").upper())
        if module is None:
            raise ConfigError(
                f"kafka.client: no Java login module for SASL mechanism {mechanism!r}; set"
                " kafka.java_client.sasl.jaas.config yourself"
            )
        user = _jaas_quote(librdkafka.get("sasl.username", ""))
        password = _jaas_quote(librdkafka.get("sasl.password", ""))
        java["sasl.jaas.config"] = f"{module} required username={user} password={password};"

    def pem(key: str) -> str:
        try:
            return Path(librdkafka[key]).read_text()
        except OSError as exc:
            raise ConfigError(f"kafka.client.{key}: cannot read the PEM file") from exc

    if "ssl.ca.location" in librdkafka:
        java["ssl.truststore.type"] = "PEM"
        java["ssl.truststore.certificates"] = pem("ssl.ca.location")
    if "ssl.certificate.location" in librdkafka or "ssl.key.location" in librdkafka:
        if not ("ssl.certificate.location" in librdkafka and "ssl.key.location" in librdkafka):
            raise ConfigError(
                "kafka.client: ssl.certificate.location and ssl.key.location go together"
            )
        java["ssl.keystore.type"] = "PEM"
        java["ssl.keystore.certificate.chain"] = pem("ssl.certificate.location")
        java["ssl.keystore.key"] = pem("ssl.key.location")
        if "ssl.key.password" in librdkafka:
            java["ssl.key.password"] = librdkafka["ssl.key.password"]
    return java
