"""GCE's metadata server: `instance/preempted` and `instance/maintenance-event`."""

from __future__ import annotations

import re
import urllib.request

from ftharness.notices.http import MetadataSource, PollError, fetch, status_error
from ftharness.notices.notice import GCE_DEFAULT_BASE_URL, PreemptionNotice

_GCE_INSTANCE_PATH = "/computeMetadata/v1/instance/"
_GCE_TOKEN_VALUE = re.compile(r"[A-Z][A-Z0-9_]*")


class GceMetadataSource(MetadataSource):
    """GCE: `instance/preempted` (TRUE once a spot/preemptible VM is being
    stopped) and `instance/maintenance-event` (NONE, or the kind of maintenance
    coming, e.g. TERMINATE_ON_HOST_MAINTENANCE).

    Any maintenance event other than NONE counts as a notice, including
    MIGRATE_ON_HOST_MAINTENANCE: a live migration usually succeeds, but an extra
    checkpoint costs seconds and a failed migration costs the work since the
    last one.

    Example::

        notice = GceMetadataSource("http://metadata.google.internal").check()
    """

    name = "gce"

    def __init__(self, base_url: str = GCE_DEFAULT_BASE_URL, timeout: float = 1.0) -> None:
        super().__init__(base_url, timeout)

    def _query(self) -> PreemptionNotice | None:
        if self._get("preempted") == "TRUE":
            return PreemptionNotice(self.name, "instance/preempted=TRUE", None)
        event = self._get("maintenance-event")
        if event != "NONE":
            return PreemptionNotice(self.name, f"instance/maintenance-event={event}", None)
        return None

    def _get(self, key: str) -> str:
        url = self._url(_GCE_INSTANCE_PATH + key)
        # GCE refuses requests without this header (403), so that a server
        # tricked into fetching a URL for someone else (SSRF) cannot read the
        # metadata: a plain redirect or <img> cannot add it.
        request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
        response = fetch(self._opener, request, self._timeout)
        if response.status != 200:
            raise status_error(f"GET {url}", response)
        # The real server always answers with the same header. Without it the
        # answer comes from something else that owns the name (a captive
        # portal, a corporate DNS wildcard, another cloud's metadata server),
        # and its 200 must not be read as a verdict on preemption.
        if response.headers.get("Metadata-Flavor") != "Google":
            raise PollError(
                "not a GCE metadata server",
                f"GET {url}: the answer lacks the 'Metadata-Flavor: Google' header",
            )
        value = response.body.decode("ascii", "replace").strip()
        if key == "preempted":
            valid = value in ("TRUE", "FALSE")
        else:
            valid = _GCE_TOKEN_VALUE.fullmatch(value) is not None
        if not valid:
            raise PollError("unexpected body", f"GET {url}: unexpected body {value[:80]!r}")
        return value
