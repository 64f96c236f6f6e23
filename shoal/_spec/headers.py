"""HTTP headers of the wire contract beyond auth and content type.

`Idempotency-Key`: sent by the SDK with every POST, one random value per logical request, the same on each
resend of it. A write that would be wrong done twice (a queue put or pop, a Dict pop, …) is recorded under it
by the control plane in the write's own transaction, so a resend after a lost reply returns the first result.
`Shoal-Retry`: on a resend only ("this request may have been done already"): lets the control plane look for
the first one where that costs a read (a call whose id it no longer holds in memory).
"""

IDEMPOTENCY_KEY = "Idempotency-Key"
RETRY = "Shoal-Retry"
MAX_IDEMPOTENCY_KEY = 64  # characters: letters, digits, '-' and '_'
