"""What a notice is and which servers to ask: the package's plain data."""

from __future__ import annotations

from dataclasses import dataclass

NOTICE_KINDS: tuple[str, ...] = ("none", "gce", "aws", "auto")

GCE_DEFAULT_BASE_URL = "http://metadata.google.internal"
AWS_DEFAULT_BASE_URL = "http://169.254.169.254"


@dataclass(frozen=True)
class PreemptionNotice:
    """The cloud says this machine is going away.

    Args:
        source: "gce" or "aws".
        detail: human text, e.g. "instance/preempted=TRUE".
        deadline: `time.time()` seconds at which termination is expected, when
            the source says (AWS does; GCE does not: None).
    """

    source: str
    detail: str
    deadline: float | None


@dataclass(frozen=True)
class NoticeConfig:
    """Which metadata server to poll, how often, and where it lives.

    Args:
        kind: "none" (poll nothing), "gce", "aws", or "auto" (probe both once,
            keep the one that answers).
        poll_interval: seconds between polls.
        timeout: seconds allowed for each HTTP request.
        gce_base_url: the GCE metadata server (tests point it at 127.0.0.1).
        aws_base_url: the AWS instance metadata service.
    """

    kind: str = "none"
    poll_interval: float = 5.0
    timeout: float = 1.0
    gce_base_url: str = GCE_DEFAULT_BASE_URL
    aws_base_url: str = AWS_DEFAULT_BASE_URL

    def __post_init__(self) -> None:
        if self.kind not in NOTICE_KINDS:
            raise ValueError(
                f"preemption notice kind must be one of {', '.join(NOTICE_KINDS)}; "
                f"got {self.kind!r}"
            )
        if not self.poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds; got {self.poll_interval!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds; got {self.timeout!r}")
        for name in ("gce_base_url", "aws_base_url"):
            validate_base_url(name, getattr(self, name))


def validate_base_url(name: str, url: str) -> None:
    # urllib also opens file:// and ftp:// URLs; a metadata server is HTTP.
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{name} must be an http:// or https:// URL; got {url!r}")
