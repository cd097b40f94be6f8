"""How stream-clf authenticates to Kafka and encrypts the connection: SSL and SASL (PLAIN, SCRAM).

One description, two dialects: librdkafka properties for the confluent-kafka clients (admin,
produce, tail, readiness) and Faust credentials for the worker's aiokafka clients. Passwords are
never part of a repr, a log line or an error message.
"""

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stream_clf.errors import ConfigError

if TYPE_CHECKING:  # Faust is imported only where a worker runs: `stream-clf --help` stays fast
    from faust.types.auth import CredentialsT

__all__ = ["MECHANISMS", "PLAINTEXT", "PROTOCOLS", "KafkaSecurity"]

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """The security settings of every Kafka connection stream-clf makes."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "PLAIN"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    key_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.sasl and not (self.username and self.password):
            raise ConfigError(f"--security-protocol {self.protocol} needs --sasl-username and --sasl-password")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--ssl-cert and --ssl-key go together (a client certificate and its private key)")
        if not self.tls and any(item is not None for item in (self.ca, self.cert, self.key)):
            raise ConfigError(f"--ssl-* settings need --security-protocol SSL or SASL_SSL, not {self.protocol}")
        for flag, path in (("--ssl-ca", self.ca), ("--ssl-cert", self.cert), ("--ssl-key", self.key)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{flag} {path}: no such file")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")

    def librdkafka(self) -> dict[str, str]:
        """Properties for a confluent-kafka client."""
        config = {"security.protocol": self.protocol.lower()}
        if self.sasl:
            config |= {"sasl.mechanism": self.mechanism, "sasl.username": self.username or ""}
            config["sasl.password"] = self.password or ""
        if self.ca:
            config["ssl.ca.location"] = str(self.ca)
        if self.cert and self.key:
            config |= {"ssl.certificate.location": str(self.cert), "ssl.key.location": str(self.key)}
            if self.key_password:
                config["ssl.key.password"] = self.key_password
        return config

    def aiokafka(self) -> dict[str, object]:
        """Keyword arguments for an aiokafka client (its admin client, say)."""
        config: dict[str, object] = {"security_protocol": self.protocol}
        if self.tls:
            config["ssl_context"] = self.ssl_context()
        if self.sasl:
            config |= {
                "sasl_mechanism": self.mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password,
            }
        return config

    def faust_credentials(self) -> "CredentialsT | None":
        """Credentials for Faust's ``broker_credentials`` (None for PLAINTEXT)."""
        import faust

        context = self.ssl_context() if self.tls else None
        if self.sasl:
            return faust.SASLCredentials(
                username=self.username, password=self.password, ssl_context=context, mechanism=self.mechanism
            )
        return faust.SSLCredentials(context) if context is not None else None

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: the CA (or the system's), and the client certificate if given."""
        try:
            context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
            if self.cert and self.key:
                context.load_cert_chain(str(self.cert), str(self.key), password=self.key_password)
        except (ssl.SSLError, OSError) as error:
            raise ConfigError(f"TLS settings cannot be loaded: {error}") from None
        return context


PLAINTEXT = KafkaSecurity()
