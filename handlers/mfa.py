"""Two-factor login (TOTP): enrolment, the login's second step, an admin's reset."""
from handlers import no_content, ok
from handlers.auth import throttled
from middleware.tenancy import current_caller
from models import accounts, mfa


def start_totp_enrolment():
    """A new TOTP secret and its otpauth:// URI, shown once; pending until confirmed."""
    return ok(mfa.start_enrolment(current_caller()))


def confirm_totp_enrolment(body: dict):
    """Turn TOTP on with a code from the authenticator; answers the recovery codes, once."""
    return ok(mfa.confirm_enrolment(current_caller(), body["code"]))


def verify_mfa(body: dict):
    """The login's second step: the challenge and a TOTP or recovery code give the session's tokens."""
    email = mfa.challenged_email(body["mfa_token"])
    return ok(throttled(email, lambda origin: accounts.verify_mfa(body["mfa_token"], body["code"], origin),
                        "INVALID_MFA_CODE"))


def reset_staff_mfa(id_: str):
    """An admin turns a member's second factor off; they enrol again at their next login."""
    mfa.reset(current_caller(), id_)
    return no_content()
