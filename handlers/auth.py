"""Login, token refresh, logout and the caller's own profile."""
import flask

import state
from errors import ApiError
from handlers import encode, no_content, ok
from middleware import auth, ratelimit
from middleware.observability import LOGIN_FAILURES
from middleware.tenancy import current_caller, request_origin
from models import accounts, sessions


def login(body: dict):
    """Exchange email and password for tokens, or for an MFA challenge (202) when the member has a second factor."""
    result = _logged_in(body["email"], body["password"], body.get("org_id"))
    return ok(result, 202 if "access_token" not in result else 200)


def _logged_in(email: str, password: str, org_id: str | None = None) -> dict:
    """The session's tokens (or the next step), with the per-account throttles on failed passwords."""
    return throttled(email, lambda origin: accounts.login(email, password, origin, org_id), "INVALID_CREDENTIALS")


def throttled(email: str | None, attempt, failure_code: str) -> dict:
    """Run ``attempt(origin)`` under the login throttles of ``email`` (middleware/ratelimit.py):
    refused beforehand when its failures are used up, counted when it fails with ``failure_code``."""
    origin = request_origin()
    ip = origin["ip_address"]
    stranger = email is not None and ratelimit.check_login_account(
        email, ip, known_origin=lambda: accounts.logged_in_from(email, ip))
    try:
        result = attempt(origin)
    except ApiError as exc:
        if exc.code == failure_code:
            if email is not None:
                ratelimit.record_failed_login(email, ip)
            LOGIN_FAILURES.inc()
        raise
    finally:
        if stranger:  # after its failure was counted, so that no moment counts it nowhere
            ratelimit.release_stranger(email)
    if email is not None:
        ratelimit.record_login(email, ip)
    return result


def issue_token(body: dict):
    """OAuth 2.0 token endpoint (password and refresh_token grants), answered without the envelope."""
    if body["grant_type"] == "password":
        tokens = _logged_in(_form_field(body, "username"), _form_field(body, "password"))
        if tokens.get("mfa_required"):  # an OAuth tool cannot take the second step
            raise ApiError("MFA_REQUIRED")
        if tokens.get("organization_required"):
            raise ApiError("ORGANIZATION_REQUIRED")
    else:
        tokens = accounts.refresh(_form_field(body, "refresh_token"), request_origin())
    answer = {name: tokens[name] for name in ("access_token", "token_type", "expires_in", "refresh_token")}
    answer["scope"] = auth.verified_claims(tokens["access_token"])["scope"]
    return flask.Response(encode(answer), status=200, content_type="application/json",
                          headers={"Pragma": "no-cache"})


def _form_field(body: dict, name: str) -> str:
    value = body.get(name)
    if not value:
        raise ApiError("VALIDATION_ERROR", f"{name} is required with grant_type={body['grant_type']}", field=name)
    return value


def refresh_token(body: dict):
    """Rotate a refresh token into a new pair."""
    return ok(accounts.refresh(body["refresh_token"], request_origin()))


def logout(body: dict):
    """Revoke the session the refresh token belongs to."""
    accounts.logout(body["refresh_token"], request_origin())
    return no_content()


def change_password(body: dict):
    """The member changes their password; their other sessions end, this one goes on."""
    caller = current_caller()
    throttled(accounts.login_email(caller),
              lambda _origin: accounts.change_password(caller, body["current_password"], body["new_password"]),
              "BUSINESS_RULE_VIOLATION")
    return no_content()


def list_sessions():
    """The caller's sessions in force, the current one marked."""
    return ok(sessions.sessions_of(current_caller()))


def end_session(id_: str):
    """End one of the caller's sessions (the current one too: a logout)."""
    sessions.end_own(current_caller(), id_, request_origin())
    return no_content()


def get_current_user():
    """The authenticated staff member with their roles and scopes."""
    caller = current_caller()
    return ok(accounts.me(caller.org_id, caller.user_id))


def get_json_web_key_set():
    """The public keys that verify access tokens, for other services (RFC 7517, no envelope)."""
    return flask.Response(encode(state.current().keys.jwks()), status=200,
                          content_type="application/json", headers={"Cache-Control": "public, max-age=300"})
