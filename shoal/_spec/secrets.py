"""What a secret may hold: checked by `Secret.from_dict` and again by the control plane when one is stored."""

from __future__ import annotations

import re

KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # an environment variable name
MAX_KEY, MAX_VALUE = 16_384, 32_768  # characters
