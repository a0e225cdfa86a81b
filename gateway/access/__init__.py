"""Access: lab users, bearer tokens, roles and scopes (RBAC), audit, one-time connect sessions.

Used by every front door (REST, websocket, later SSH); knows nothing of HTTP.

Modules: ``rbac`` (Azure's roles, actions, scopes), ``users`` (lab users and passwords),
``store`` (the SQLite database ``lab.db``), ``tokens`` (bearer tokens, stored hashed),
``audit`` (who did what, from where, with which outcome), ``connect_sessions`` (the
one-time session ids that ``connect`` hands out and the websocket door claims),
``lockout`` (Entra ID's smart lockout of a user after repeated failed sign-ins),
``signing`` (signed, expiring URLs: the boot diagnostics blobs').

Exceptions (``gateway.access.errors``)::

    AccessError                      base of everything this package raises
     +-- AuthenticationError         the caller is not who they say (HTTP 401)
     |    +-- InvalidCredentials     wrong user name or password
     |    +-- AccountLocked          too many failed sign-ins: locked for a while (AADSTS50053)
     |    +-- MissingToken           no bearer token came with the request
     |    +-- InvalidToken           the token is unknown (never issued, or revoked)
     |    +-- ExpiredToken           the token's lifetime is over
     +-- AuthorizationError          the caller lacks the action at the scope (HTTP 403)
     +-- StoreError                  the lab database (lab.db) cannot be opened or used
     |    +-- StorageFull            its disk is full: the write was refused, nothing done
     +-- ConnectSessionError         a connect session cannot be claimed
     |    +-- UnknownSession         no such session id
     |    +-- SessionExpired         older than its lifetime (60 s)
     |    +-- SessionUsed            already claimed once
     |    +-- SessionWrongUser       claimed by another user than the one it was made for
     +-- SignatureRefused            a signed URL that is forged, unsigned or expired
"""
