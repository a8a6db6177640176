"""URIs as they may be shown or stored: a tracking or storage URI can carry credentials (``user:password@``, a
token in its query), which are never printed, logged or written into an artifact."""
from __future__ import annotations

import re

USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
SECRET_QUERY = re.compile(r"(?i)([?&](?:token|access_token|password|secret|key|sig|signature|x-amz-signature|x-amz-credential)=)[^&#\s]*")


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it replaced by ``***``."""
    return SECRET_QUERY.sub(r"\1***", USERINFO.sub("***@", text))
