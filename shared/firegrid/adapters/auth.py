"""The TokenVerifier port: PyGrid's three ways, plus Firebase Auth ID tokens.

Algorithms are whitelisted per key type, so ``alg: none`` and HS/RS key
confusion are refused.
"""

from __future__ import annotations

import jwt
import requests

from firegrid.domain.config import AuthConfig
from firegrid.domain.errors import Unauthorized

INVALID_TOKEN = "The 'auth_token' you sent is invalid."
HMAC_ALGORITHMS = ["HS256"]
PUBLIC_KEY_ALGORITHMS = ["RS256", "ES256"]
ENDPOINT_TIMEOUT_S = 5.0


class JwtVerifier:
    def subject(self, token: str, auth: AuthConfig) -> str:
        if auth.secret:
            return self._jwt_subject(token, auth.secret, HMAC_ALGORITHMS, auth)
        if auth.pub_key:
            return self._jwt_subject(token, auth.pub_key, PUBLIC_KEY_ALGORITHMS, auth)
        if auth.endpoint:
            return self._endpoint_subject(token, auth.endpoint)
        if auth.firebase:
            return self._firebase_subject(token)
        raise Unauthorized(INVALID_TOKEN, "invalid_token")

    @staticmethod
    def _jwt_subject(token: str, key: str, algorithms: list[str], auth: AuthConfig) -> str:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=auth.audience,
                issuer=auth.issuer,
                options={"verify_aud": auth.audience is not None},
            )
        except jwt.PyJWTError:
            raise Unauthorized(INVALID_TOKEN, "invalid_token") from None
        subject = claims.get("sub") or claims.get("uid")
        # PyGrid's tokens carry no subject: the token itself is then the identity.
        return f"sub:{subject}" if subject else f"token:{token}"

    @staticmethod
    def _endpoint_subject(token: str, endpoint: str) -> str:
        try:
            response = requests.post(
                endpoint, json={"auth_token": token}, timeout=ENDPOINT_TIMEOUT_S
            )
        except requests.RequestException:
            raise Unauthorized(
                "The authentication endpoint could not be reached", "auth_endpoint_failed"
            ) from None
        if response.status_code != 200:
            raise Unauthorized(
                "The authentication endpoint refused the token", "auth_endpoint_refused"
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        subject = body.get("sub") or body.get("uid") or body.get("id")
        return f"endpoint:{subject}" if subject else f"token:{token}"

    @staticmethod
    def _firebase_subject(token: str) -> str:
        from firebase_admin import auth as firebase_auth

        from firegrid.adapters.firebase import app

        try:
            claims = firebase_auth.verify_id_token(token, app=app())
        except (ValueError, firebase_auth.InvalidIdTokenError, firebase_auth.ExpiredIdTokenError):
            raise Unauthorized(INVALID_TOKEN, "invalid_token") from None
        return f"firebase:{claims['uid']}"
