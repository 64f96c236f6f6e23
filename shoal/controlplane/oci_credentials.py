"""Registry credentials of an OCI image's base step, from its secret's values (docs/oci.md, "Registries").

Amazon ECR (`from_aws_ecr`): ECR's registry login is `AWS` and a 12-hour token that ECR's
GetAuthorizationToken API returns for the secret's AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN
if any) in AWS_REGION (else the region in the registry's host name). The request is signed with AWS Signature
Version 4 here (a few lines of hashing), so the control plane needs no AWS SDK.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
import urllib.error
import urllib.request
from typing import Any

from ..oci.registry import RegistryAuthError, parse_reference

_TARGET = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"


def _sign(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signed_headers(host: str, region: str, body: bytes, key_id: str, secret: str, token: str,
                   now: datetime.datetime) -> dict[str, str]:
    """The headers of a SigV4-signed POST of `body` to ECR's JSON API at `host`."""
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"content-type": "application/x-amz-json-1.1", "host": host, "x-amz-date": amz_date,
               "x-amz-target": _TARGET}
    if token:
        headers["x-amz-security-token"] = token
    names = sorted(headers)
    canonical = "\n".join(["POST", "/", "", *(f"{n}:{headers[n]}" for n in names), "", ";".join(names),
                           hashlib.sha256(body).hexdigest()])
    scope = f"{day}/{region}/ecr/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = _sign(_sign(_sign(_sign(f"AWS4{secret}".encode(), day), region), "ecr"), "aws4_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={';'.join(names)}, "
                                f"Signature={signature}")
    return headers


def ecr_credentials(ref: str, env: dict[str, str], timeout: float = 30) -> tuple[str, str]:
    """("AWS", token) for pulling `ref` from ECR with the secret's AWS keys."""
    reference = parse_reference(ref)
    key_id, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
    if not key_id or not secret:
        raise RegistryAuthError(f"pulling {reference}: from_aws_ecr needs a secret with AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY (and AWS_REGION)")
    m = re.match(r"^\d+\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com", reference.registry)
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or (m.group(1) if m else "")
    if not region:
        raise RegistryAuthError(f"pulling {reference}: set AWS_REGION in the secret (the registry's host name "
                                "does not say the region)")
    host = f"api.ecr.{region}.amazonaws.com"
    body = b"{}"
    headers = signed_headers(host, region, body, key_id, secret, env.get("AWS_SESSION_TOKEN", ""),
                             datetime.datetime.now(datetime.timezone.utc))
    request = urllib.request.Request(f"https://{host}/", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode(errors="replace")
        raise RegistryAuthError(f"pulling {reference}: ECR refused the AWS credentials given ({exc.code}: "
                                f"{detail})") from None
    except (OSError, ValueError) as exc:
        raise RegistryAuthError(f"pulling {reference}: cannot get an ECR token from {host} ({exc})") from None
    try:
        user, _, password = base64.b64decode(data["authorizationData"][0]["authorizationToken"]).decode().partition(":")
    except (KeyError, IndexError, ValueError) as exc:
        raise RegistryAuthError(f"pulling {reference}: unexpected answer from ECR ({exc})") from None
    return user, password


def registry_credentials(step: dict[str, Any]) -> tuple[str, str] | None:
    """(username, password) for the registry of a base step, from its secret's values: REGISTRY_USERNAME and
    REGISTRY_PASSWORD; for Google Artifact Registry `_json_key` and SERVICE_ACCOUNT_JSON; for ECR `AWS` and a
    token from ECR's GetAuthorizationToken (REGISTRY_PASSWORD when the secret holds one already)."""
    env = step.get("secret_env") or {}
    registry = step.get("registry") or "generic"
    if registry == "gcp" and env.get("SERVICE_ACCOUNT_JSON"):
        return "_json_key", env["SERVICE_ACCOUNT_JSON"]
    if registry == "aws_ecr":
        if env.get("REGISTRY_PASSWORD"):  # a token fetched already
            return env.get("REGISTRY_USERNAME") or "AWS", env["REGISTRY_PASSWORD"]
        return ecr_credentials(step.get("tag") or "", env)
    if env.get("REGISTRY_USERNAME") or env.get("REGISTRY_PASSWORD"):
        return env.get("REGISTRY_USERNAME", ""), env.get("REGISTRY_PASSWORD", "")
    return None
