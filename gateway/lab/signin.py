"""Signing in with a password and auditing a refusal, for every door that takes a password
(the HTTP door's token endpoint and the SSH door): the same lockout, the same audit rows.
"""

from __future__ import annotations

from gateway.access import audit
from gateway.access.errors import AccountLocked, InvalidCredentials
from gateway.access.users import User
from gateway.lab.context import LabContext


def sign_in(ctx: LabContext, name: str, password: str, address: str, grant: str = "") -> User:
    """The lab user of ``name`` and ``password``. A refusal is audited (best effort: a
    full disk does not turn a wrong password into a 507) and raised: AccountLocked while
    the name is locked (even for the right password), InvalidCredentials otherwise."""
    prefix = f"{grant}: " if grant else ""
    try:
        return ctx.directory.authenticate(name, password)
    except AccountLocked as err:
        audit_refusal(ctx, "token", name[:64], address,
                      f"{prefix}locked for {err.retry_after:.0f} s more")  # fmt: skip
        raise
    except InvalidCredentials as err:
        locked = ctx.directory.lockout.locked_for(name)
        more = f"; locked for {locked:.0f} s after too many failures" if locked else ""
        audit_refusal(ctx, "token", name[:64], address, f"{prefix}{err}{more}")
        raise


def audit_refusal(ctx: LabContext, action: str, who: str, address: str, detail: str) -> None:
    """Audit a refused request; a database that cannot take the row (a full disk, logged
    by the store once a minute) does not change the refusal."""
    ctx.audit.post(action, user=who, address=address, target=who, outcome=audit.DENIED,
                   detail=detail)  # fmt: skip
