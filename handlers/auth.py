"""Login, token refresh, logout and the caller's own profile."""
from errors import ApiError
from handlers import no_content, ok
from middleware import ratelimit
from middleware.observability import LOGIN_FAILURES
from middleware.tenancy import current_caller, request_origin
from models import accounts


def login(body: dict):
    """Exchange email and password for an access token and a refresh token."""
    email = body["email"]
    ratelimit.check_login_account(email)
    try:
        return ok(accounts.login(email, body["password"], request_origin()))
    except ApiError as exc:
        if exc.code == "INVALID_CREDENTIALS":
            ratelimit.record_failed_login(email)
            LOGIN_FAILURES.inc()
        raise


def refresh_token(body: dict):
    """Rotate a refresh token into a new pair."""
    return ok(accounts.refresh(body["refresh_token"], request_origin()))


def logout(body: dict):
    """Revoke the session the refresh token belongs to."""
    accounts.logout(body["refresh_token"], request_origin())
    return no_content()


def get_current_user():
    """The authenticated staff member with their roles and scopes."""
    caller = current_caller()
    return ok(accounts.me(caller.org_id, caller.user_id))
