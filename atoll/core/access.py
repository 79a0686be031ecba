"""The authorization table: every gRPC method and HTTP route, and who may call it. Pure data.

One :class:`Rule` per method (``/atoll.v1.Service/Method``) or route (``GET /v1/models``):
which kinds of caller may call it, the capability scope a token-holding caller needs, and the
ownership rule the handler applies to what the call touches. The coordinator's and the agents'
interceptors ask :func:`decide`; the HTTP doors ask :func:`decide_http`; ``docs/security.md``
shows :func:`render_markdown`; ``tests/security/test_access_table.py`` walks every rule with
every kind of caller.

Kinds of caller (:data:`CALLERS`):

- ``anonymous``: presents nothing;
- ``user`` / ``admin``: an API key of that role (bound to a tenant);
- ``agent``: an agent on ``AgentService``, authenticated by what its messages carry (a join
  token or its node key at ``Register``, then the session token on every heartbeat);
- ``node``: a capability token the coordinator issued to one node (``sub: node:<id>``);
- ``coordinator``: a capability token with ``sub: coordinator`` for the called node.

While no API key exists (a fresh coordinator, see ``coordinator/auth.py``) an anonymous caller
of ``ClientService`` and ``ModelStore`` is treated as ``admin``: :func:`decide` is told so by the
caller's kind, never by this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from atoll.core.credentials import SCOPE_FETCH, SCOPE_INFER, SCOPE_MANAGE
from atoll.core.errors import PermissionDenied, Unauthenticated

ANONYMOUS, USER, ADMIN, AGENT, NODE, COORDINATOR = "anonymous", "user", "admin", "agent", "node", "coordinator"
CALLERS = (ANONYMOUS, USER, ADMIN, AGENT, NODE, COORDINATOR)
TOKEN_CALLERS = frozenset({NODE, COORDINATOR})

# Ownership rules, applied by the handler to what the call touches.
OWN_TENANT = "tenant"            # a user's own tenant's workflows / blobs; an admin's: every tenant's
TENANT_VIEW = "tenant-view"      # every node, but a user sees only its own tenant's replicas and blobs
ASSIGNED = "assigned"            # a node: only blobs its current assignments reference
JOIN = "join"                    # a join token allowing the claimed tier and region, or the bound node key
SESSION = "session"              # the session token Register returned, bound to the node id
BOOTSTRAP = "bootstrap"          # also anonymous while no API key exists (the first admin key)
METRICS_TOKEN = "metrics-token"  # with --metrics-token-file: only a caller presenting that bearer token
MAY_HOLD = "may-hold"            # a node: a trusted_only workflow's data only with a trusted, non-renter token


@dataclass(frozen=True)
class Rule:
    surface: str                  # gRPC service full name, or "http:coordinator" / "http:agent"
    method: str                   # gRPC method name, or "GET /v1/models"
    callers: frozenset[str]
    scope: str = ""               # capability scope a node/coordinator token must grant
    owner: str = ""               # ownership rule the handler applies
    enforced_by: str = ""         # the code that checks it

    @property
    def key(self) -> str:
        return f"/{self.surface}/{self.method}" if not self.surface.startswith("http:") else \
            f"{self.surface} {self.method}"


def _r(surface, methods, callers, scope="", owner="", by=""):
    return tuple(Rule(surface, m, frozenset(callers), scope, owner, by) for m in methods)


CLIENT = "atoll.v1.ClientService"
STORE = "atoll.v1.ModelStore"
AGENTS = "atoll.v1.AgentService"
WORKER = "atoll.v1.Worker"
ENTRY = "atoll.v1.Entry"
DATAPLANE = "atoll.v1.DataPlane"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
_COORD_KEYS = "coordinator/auth.py: AuthInterceptor"
_AGENT_GUARD = "agent/guard.py: WorkerGuard"
_AGENT_CARRY = _AGENT_GUARD + "; agent/carry.py: TrustGate"
_AGENT_KEYS = "agent/dataplane/entry.py: Keys (the key set the coordinator sends, or a caller token for this node)"
_METRICS = "atoll/core/metrics_http.py: guarded_app (open unless --metrics-token-file)"

# The OpenAI door's routes (atoll.core.openai_http.ROUTES; a test checks they are the same).
_DOOR_ROUTES = ["GET /v1/models", "GET /v1/models/{model}", "POST /v1/completions", "POST /v1/chat/completions",
                "POST /v1/embeddings"]

TABLE: tuple[Rule, ...] = (
    _r(CLIENT, ["ListNodes", "GetNode"], {USER, ADMIN}, owner=TENANT_VIEW, by=_COORD_KEYS)
    + _r(CLIENT, ["DrainNode", "SetNodeTrust", "RemoveNode", "ListKeys", "RevokeKey", "CreateJoinToken", "ListJoinTokens",
                  "RevokeJoinToken"], {ADMIN}, by=_COORD_KEYS)
    + _r(CLIENT, ["CreateKey"], {ADMIN}, owner=BOOTSTRAP, by=_COORD_KEYS)
    + _r(CLIENT, ["SubmitWorkflow", "ListWorkflows", "GetWorkflow", "DeleteWorkflow", "Invoke", "Profile",
                  "ListEntries"], {USER, ADMIN}, owner=OWN_TENANT, by=_COORD_KEYS)
    + _r(STORE, ["Push", "Stat"], {USER, ADMIN}, owner=OWN_TENANT, by=_COORD_KEYS)
    + _r(STORE, ["Fetch"], {USER, ADMIN, NODE}, scope=SCOPE_FETCH, owner=f"{OWN_TENANT}; node: {ASSIGNED}",
         by=_COORD_KEYS)
    + _r(AGENTS, ["Register"], {AGENT}, owner=JOIN, by="coordinator/registry.py: Registry.register")
    + _r(AGENTS, ["Heartbeat"], {AGENT}, owner=SESSION, by="coordinator/registry.py: Registry.open_session")
    + _r(WORKER, ["Generate", "Embed"], {COORDINATOR, NODE}, scope=SCOPE_INFER, owner=f"node: {MAY_HOLD}",
         by=_AGENT_CARRY)
    + _r(WORKER, ["LoadAdapter", "UnloadAdapter", "ListAdapters"], {COORDINATOR}, scope=SCOPE_MANAGE,
         by=_AGENT_GUARD)
    + _r(ENTRY, ["Invoke"], {USER, ADMIN}, owner=OWN_TENANT, by=_AGENT_KEYS)
    + _r(ENTRY, ["Describe"], CALLERS, by="open (clients rank entries by its round trip)")
    + _r(DATAPLANE, ["Forward"], {NODE}, scope=SCOPE_INFER, owner=MAY_HOLD, by=_AGENT_CARRY)
    + _r(HEALTH, ["Check", "Watch", "List"], CALLERS, by="open (Kubernetes probes)")
    + _r(REFLECTION, ["ServerReflectionInfo"], CALLERS, by="open (service discovery for grpcurl)")
    + _r("http:coordinator", _DOOR_ROUTES, {USER, ADMIN}, owner=OWN_TENANT,
         by="coordinator/openai_http.py: door_authorize (atoll.core.openai_http.OpenAIDoor)")
    + _r("http:coordinator", ["GET /metrics"], CALLERS, owner=METRICS_TOKEN, by=_METRICS)
    + _r("http:agent", _DOOR_ROUTES,
         {USER, ADMIN}, owner=OWN_TENANT, by="agent/dataplane/door.py: EntryDoor (the keys of " + _AGENT_KEYS + ")")
    + _r("http:agent", ["GET /metrics"], CALLERS, owner=METRICS_TOKEN, by=_METRICS)
)

_BY_KEY = {r.key: r for r in TABLE}


def rule(full_method: str) -> Rule | None:
    """The rule of a gRPC method (``/atoll.v1.Worker/Generate``), or None when unknown."""
    return _BY_KEY.get(full_method)


def http_rule(surface: str, method: str, path: str) -> Rule | None:
    """The rule of an HTTP route (``surface``: ``coordinator`` or ``agent``)."""
    return _BY_KEY.get(f"http:{surface} {method.upper()} {path.rstrip('/') or '/'}")


def open_to_anyone(full_method: str) -> bool:
    """Methods anyone may call (health, reflection): nothing presented is even looked at."""
    r = rule(full_method)
    return r is not None and ANONYMOUS in r.callers


def decide(full_method: str, caller: str, scopes: tuple[str, ...] = ()) -> None:
    """Raise Unauthenticated (nothing presented where something is needed) or PermissionDenied
    (a caller of the wrong kind, or a token without the scope); return when ``caller`` may call
    ``full_method``. An unknown method is refused: every method must be in the table."""
    r = rule(full_method)
    if r is None:
        raise PermissionDenied(f"{full_method} is not in the authorization table")
    _decide(r, caller, scopes)


def decide_http(surface: str, method: str, path: str, caller: str) -> None:
    """The same question for an HTTP route; an unknown route is the door's 404, not ours."""
    r = http_rule(surface, method, path)
    if r is not None:
        _decide(r, caller, ())


def _decide(r: Rule, caller: str, scopes: tuple[str, ...]) -> None:
    if caller in r.callers:
        if caller in TOKEN_CALLERS and r.scope and r.scope not in scopes:
            raise PermissionDenied(f"{r.method} needs a capability token granting {r.scope}")
        return
    if caller == ANONYMOUS:
        need = " or ".join(_NEEDS[c] for c in sorted(r.callers) if c in _NEEDS)
        raise Unauthenticated(f"{r.method} needs {need or 'credentials'}")
    raise PermissionDenied(f"{r.method} may not be called by {_WHO[caller]}; allowed: "
                           + ", ".join(sorted(r.callers)))


_NEEDS = {USER: "an API key", ADMIN: "an admin API key", NODE: "a node token", COORDINATOR: "a coordinator token",
          AGENT: "an agent's join token or node key"}
_WHO = {USER: "a user key", ADMIN: "an admin key", AGENT: "an agent", NODE: "a node token",
        COORDINATOR: "the coordinator", ANONYMOUS: "an anonymous caller"}


def render_markdown() -> str:
    """The table as Markdown (``docs/security.md`` includes it; a test checks it is current)."""
    lines = ["| surface | method or route | who may call it | token scope | ownership rule | checked by |",
             "|---|---|---|---|---|---|"]
    for r in TABLE:
        who = "anyone" if r.callers == frozenset(CALLERS) else ", ".join(c for c in CALLERS if c in r.callers)
        lines.append(f"| `{r.surface}` | `{r.method}` | {who} | {r.scope or '—'} | {r.owner or '—'} | "
                     f"{r.enforced_by} |")
    return "\n".join(lines)
