"""Who may steer the running tuner: signed, run-bound, expiring operator requests.

``autotune control`` asks the running tuner (``autotune run``) to change its mode or override the
concurrency by writing a row into the store's ``control_requests`` table. Anyone who can write to the
database can write such a row, so the row proves nothing by itself. What the tuner believes:

- **Identity**: the request carries an HMAC-SHA256 signature made with the user's key. The tuner is
  configured with an *operators file* naming each user's roles and key; the signature must verify
  with that user's key. Roles come only from the operators file, never from the request.
- **Binding**: the request names the run id of the tuner it is for; another run refuses it (a
  request queued for a tuner that has gone is not applied to the next one).
- **Freshness**: it expires (``expires_s``) and may not be issued in the future beyond
  :data:`MAX_CLOCK_SKEW_S`; its random 128-bit ``nonce`` is applied at most once (a copied row is a
  replay).

The signed fields are exactly :data:`SIGNED_FIELDS`; the signature is over their canonical JSON
(:func:`canonical`: sorted keys, compact separators, times rounded to the millisecond so a value
read back from any SQL backend signs the same). :func:`verify` is pure: the tuner passes the
request row, the operators, its run id, the time and the nonces it has seen, and gets
:class:`Verified` or :class:`Refusal` (with a ``kind`` and a reason for the audit log).

The operators file (YAML), one entry per user::

    olga:
      roles: [operator]
      key_file: operator-olga.key     # relative to this file; the key is hex, 16+ bytes
    eve:
      roles: [submitter]
      key: 6f1c...                    # inline hex: possible, discouraged (the file is then a secret)

:func:`parse_operators` validates a loaded document (errors name the file and the entry);
:func:`load_operators` and :func:`add_operator` are the thin file adapters (``autotune run
--operators-file``, ``autotune operator-key``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SIGNED_FIELDS = ("cluster", "run_id", "user", "action", "value", "nonce", "issued_s", "expires_s")
_TIME_FIELDS = ("issued_s", "expires_s")
MAX_CLOCK_SKEW_S = 30.0  # a request issued this far in the tuner's future is still believed
MIN_KEY_BYTES = 16
KEY_BYTES = 32  # what :func:`new_key` makes
NONCE_BYTES = 16  # 128 bits
DEFAULT_TTL_S = 120.0
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")  # also a file name: operator-<user>.key
_KEYS = ("roles", "key_file", "key")


class OperatorsError(ValueError):
    """An operators file or key that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Operator:
    user: str
    roles: frozenset[str]
    key: bytes = field(repr=False)  # never in a log line


@dataclass(frozen=True)
class Verified:
    user: str
    roles: frozenset[str]


@dataclass(frozen=True)
class Refusal:
    kind: str  # unsigned | unknown_user | bad_signature | other_run | replayed | expired | future
    reason: str


# -- signing ---------------------------------------------------------------------------------
def canonical(request: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: exactly :data:`SIGNED_FIELDS` of ``request``, as compact JSON with
    sorted keys; strings as strings, times as seconds rounded to the millisecond."""
    fields = {}
    for name in SIGNED_FIELDS:
        value = request[name]
        fields[name] = round(float(value), 3) if name in _TIME_FIELDS else str(value)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(request: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of :func:`canonical` ``(request)`` with ``key``, as hex."""
    return hmac.new(key, canonical(request), hashlib.sha256).hexdigest()


def signed_request(
    *,
    cluster: str,
    run_id: str,
    user: str,
    action: str,
    value: str,
    key: bytes,
    now_s: float,
    ttl_s: float = DEFAULT_TTL_S,
    nonce: str,
) -> dict[str, Any]:
    """A request for ``run_id`` issued at ``now_s`` that expires ``ttl_s`` later, with its signature.
    The caller draws the nonce (:func:`new_nonce`), so this stays pure."""
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
    req: dict[str, Any] = {
        "cluster": cluster,
        "run_id": run_id,
        "user": user,
        "action": action,
        "value": str(value),
        "nonce": nonce,
        "issued_s": round(float(now_s), 3),
        "expires_s": round(float(now_s) + float(ttl_s), 3),
    }
    req["signature"] = sign(req, key)
    return req


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def new_key() -> str:
    """A fresh key, as the hex a key file holds."""
    return secrets.token_hex(KEY_BYTES)


# -- verifying -------------------------------------------------------------------------------
def _authentic(request: Mapping[str, Any], operators: Mapping[str, Operator]) -> Refusal | Operator:
    missing = [f for f in (*SIGNED_FIELDS, "signature") if request.get(f) in (None, "")]
    if missing:
        return Refusal(
            "unsigned",
            f"unsigned request (no {', '.join(missing)}): requests must be signed "
            "by `autotune control` with the user's key",
        )
    user = str(request["user"])
    op = operators.get(user)
    if op is None:
        return Refusal("unknown_user", f"user {user!r} is not in the tuner's operators file")
    try:
        expected = sign(request, op.key)
    except (TypeError, ValueError):  # a time that is not a number: no genuine request looks like that
        return Refusal("bad_signature", "malformed request (issued_s/expires_s not numbers): forged")
    if not hmac.compare_digest(expected.encode(), str(request["signature"]).encode()):
        return Refusal(
            "bad_signature",
            f"signature does not verify with {user!r}'s key: the request is forged or was altered after it was signed",
        )
    return op


def verify(
    request: Mapping[str, Any],
    operators: Mapping[str, Operator],
    run_id: str,
    now_s: float,
    seen_nonces: Collection[str],
    max_skew_s: float = MAX_CLOCK_SKEW_S,
) -> Verified | Refusal:
    """Whether the tuner of run ``run_id`` may act on ``request`` (a ``control_requests`` row) at
    ``now_s``. Checked in this order: signed at all, known user, signature (so an altered field is
    reported as forgery, not as what it was altered to), bound to this run, nonce not seen before,
    not expired, not issued in the future beyond ``max_skew_s``. The roles are the operators file's."""
    auth = _authentic(request, operators)
    if isinstance(auth, Refusal):
        return auth
    if str(request["run_id"]) != run_id:
        return Refusal("other_run", f"request is bound to run {request['run_id']}, this tuner is run {run_id}")
    if str(request["nonce"]) in seen_nonces:
        return Refusal("replayed", f"nonce {request['nonce']} was already used: a replayed request")
    expires_s, issued_s = float(request["expires_s"]), float(request["issued_s"])
    if now_s > expires_s:
        return Refusal(
            "expired",
            f"request expired {now_s - expires_s:.1f} s ago "
            f"(issued {now_s - issued_s:.1f} s ago, lifetime {expires_s - issued_s:g} s)",
        )
    if issued_s > now_s + max_skew_s:
        return Refusal(
            "future",
            f"request is issued {issued_s - now_s:.1f} s in the tuner's future (more than "
            f"the {max_skew_s:g} s clock skew allowed): check the clocks",
        )
    return Verified(auth.user, auth.roles)


def authentic_nonces(rows: Iterable[Mapping[str, Any]], operators: Mapping[str, Operator]) -> set[str]:
    """The nonces of ``rows`` (requests already applied or refused) whose signature verifies: a
    later row with one of them is a replay. A forged row's nonce does not count, so nobody can
    spoil an operator's genuine request by forging a row with its nonce first."""
    return {str(r["nonce"]) for r in rows if not isinstance(_authentic(r, operators), Refusal)}


# -- which tuner a request is for ------------------------------------------------------------
def liveness_window_s(interval_s: float | None) -> float:
    """How old a running tuner's heartbeat may be (it beats once a control interval)."""
    return max(3.0 * float(interval_s or 0.0), 60.0)


def tuner_alive(run: Mapping[str, Any], now_s: float) -> bool:
    """Whether a ``tuner_runs`` row is a tuner running now: status running, recent heartbeat."""
    return run["status"] == "running" and now_s - float(run["heartbeat_s"]) <= liveness_window_s(run.get("interval_s"))


# -- the operators file ----------------------------------------------------------------------
def check_user(user: str, where: str) -> str:
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise OperatorsError(
            f"{where}: user name {user!r} must be 1-64 letters, digits or _.@- (starting with a letter or digit)"
        )
    return user


def parse_key(text: str, where: str) -> bytes:
    """A key as a key file or an inline ``key:`` holds it: hex, at least :data:`MIN_KEY_BYTES` bytes."""
    raw = "".join(str(text).split())
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        raise OperatorsError(f"{where}: the key is not hex (make one with `autotune operator-key`)") from None
    if len(key) < MIN_KEY_BYTES:
        raise OperatorsError(f"{where}: the key has {len(key)} bytes, at least {MIN_KEY_BYTES} are needed")
    return key


def parse_operators(doc: Any, source: str, read_key: Callable[[str], str]) -> dict[str, Operator]:
    """The operators of a loaded operators file ``doc`` (see the module docstring). ``read_key(path)``
    returns a key file's text (the adapter resolves a relative path against the file's folder) or
    raises OperatorsError. Errors name ``source`` and the entry."""
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise OperatorsError(
            f"{source}: expected a mapping of user name to {{roles: [...], key_file: PATH}}, got {type(doc).__name__}"
        )
    out: dict[str, Operator] = {}
    for user, entry in doc.items():
        where = f"{source}: operator {user!r}"
        check_user(user, where)
        if not isinstance(entry, Mapping):
            raise OperatorsError(f"{where}: expected {{roles: [...], key_file: PATH}}, got {type(entry).__name__}")
        unknown = sorted(set(map(str, entry)) - set(_KEYS))
        if unknown:
            raise OperatorsError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(_KEYS)})")
        roles = entry.get("roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) and r.strip() == r and r for r in roles):
            raise OperatorsError(f"{where}: roles must be a list of role names, e.g. [operator], got {roles!r}")
        if ("key_file" in entry) == ("key" in entry):
            raise OperatorsError(f"{where}: give exactly one of key_file (a path) or key (hex, discouraged)")
        if "key_file" in entry:
            path = entry["key_file"]
            if not isinstance(path, str) or not path:
                raise OperatorsError(f"{where}: key_file must be a path, got {path!r}")
            key = parse_key(read_key(path), f"{where}: key_file {path}")
        else:
            key = parse_key(entry["key"], f"{where}: key")
        out[user] = Operator(user, frozenset(roles), key)
    return out


# -- file adapters ---------------------------------------------------------------------------
def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise OperatorsError(f"operators file {path}: cannot read it: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise OperatorsError(f"operators file {path}: not valid YAML: {str(err).splitlines()[0]}") from None


def read_key_file(path: Path, where: str) -> bytes:
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as err:
        why = getattr(err, "strerror", None) or err
        raise OperatorsError(f"{where}: cannot read key file {path}: {why}") from None
    return parse_key(text, f"{where}: key file {path}")


def load_operators(path: Path | str) -> dict[str, Operator]:
    """The operators of the file at ``path``; a relative ``key_file`` is relative to its folder."""
    path = Path(path)
    base = path.parent

    def read_key(rel: str) -> str:
        full = base / Path(rel).expanduser()
        try:
            return full.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as err:
            why = getattr(err, "strerror", None) or err
            raise OperatorsError(f"operators file {path}: cannot read key file {full}: {why}") from None

    return parse_operators(_read_yaml(path), f"operators file {path}", read_key)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_operator(
    operators_file: Path | str,
    user: str,
    roles: Iterable[str],
    key_file: Path | str | None = None,
    rotate: bool = False,
) -> tuple[Path, bool]:
    """Add or update ``user``'s entry in ``operators_file`` (created if absent) with ``roles`` and
    ``key_file`` (default ``operator-<user>.key`` beside it). The key file is created (mode 0600)
    if absent, or when ``rotate``; an existing one is kept, so changing roles does not change the
    key. Returns the key file's path and whether a new key was written."""
    operators_file = Path(operators_file)
    check_user(user, f"operators file {operators_file}")
    given = list(roles)
    if not given or not all(isinstance(r, str) and r and r.strip() == r for r in given):
        raise OperatorsError(
            f"operators file {operators_file}: operator {user!r}: give at least one role name, got {given!r}"
        )
    role_list = sorted(set(given))
    doc = _read_yaml(operators_file) if operators_file.exists() else {}
    doc = {} if doc is None else doc
    parse_operators(doc, f"operators file {operators_file}", lambda _p: "00" * KEY_BYTES)  # its shape only
    key_path = Path(key_file) if key_file is not None else operators_file.parent / f"operator-{user}.key"
    created = rotate or not key_path.exists()
    if created:
        _write_private(key_path, new_key() + "\n")
    else:
        read_key_file(key_path, f"operators file {operators_file}: operator {user!r}")
    try:
        shown = str(key_path.resolve().relative_to(operators_file.parent.resolve()))
    except ValueError:
        shown = str(key_path.resolve())
    doc[user] = {"roles": role_list, "key_file": shown}
    operators_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = operators_file.with_name(f".{operators_file.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=True), encoding="utf-8")
    os.replace(tmp, operators_file)
    load_operators(operators_file)  # what the tuner will read: fails here, not at the tuner's start
    return key_path, created
