"""schemathesis hooks for scripts/fuzz.sh (loaded through SCHEMATHESIS_HOOKS).

Some refusals depend on what came before, which no schema can state: a code
name or batch label already taken (409), an Idempotency-Key or wallet
reference already used with another body (422 / 409), a window whose start
is not before its end (422: JSON Schema cannot compare two fields). Generated
data that the spec allows was refused for these reasons, and schemathesis
read it as "schema validation mismatch". Before each positive case is sent
(negative cases keep their garbage), these hooks make it one the server can
take for what it is:

- POST /admin/codes, /admin/codes/bulk: the generated code name, bulk prefix
  and batch label keep their generated start and get a suffix unique to the
  run, so every create is a new code;
- the same two: a window whose `starts_at` is not before `ends_at` is put in
  order (swapped; equal instants get one second between them);
- PATCH /admin/codes/{code}: the same for its window; `per_user_limit` and
  `rules` (coupons only: the schema cannot know the kind of the code in the
  path) are dropped unless the code is one this run created as a coupon,
  and `tracked` unless it is one this run did not create in bulk;
- POST /codes/use, /coupons/redeem (Idempotency-Key) and /wallet/credits,
  /wallet/debits (`reference`): the generated key or reference gets a suffix
  derived from the operation, the caller and the rest of the body, so one
  reused with another body becomes another key, and one sent again with the
  same body stays the same: a replay, answered with the first response;
- POST /wallet/debits: the spec says `voucher_id` and `purchase_type` come
  together (`dependentRequired`), which schemathesis's generator does not
  always honour; a body with one of them alone loses it.
"""

import datetime
import hashlib
import itertools
import json
import os
import uuid

import schemathesis
from schemathesis import GenerationMode

RUN = os.environ.get("FUZZ_RUN_ID", uuid.uuid4().hex)[:6]
_counter = itertools.count()

CREATES = {("POST", "/admin/codes"), ("POST", "/admin/codes/bulk")}
CHANGE = ("PATCH", "/admin/codes/{code}")
DEBIT = ("POST", "/wallet/debits")
VOUCHER_PAIR = ("voucher_id", "purchase_type")

# Names (upper case, as the server keeps them) of the coupons this run
# created, and of the codes it created one at a time.
_coupons = set()
_single = {"FUZZ", "SPRING"}  # created by scripts/fuzz.sh
IDEMPOTENT = {("POST", "/codes/use"), ("POST", "/coupons/redeem")}
REFERENCED = {("POST", "/wallet/credits"), ("POST", "/wallet/debits")}


def _unique(value, limit):
    """`value` (a string the schema allows) with a suffix unique to this run, within `limit` characters."""
    suffix = f"-{RUN}{next(_counter):x}"
    head = value if isinstance(value, str) else ""
    return head[: max(0, limit - len(suffix))] + suffix


def _instant(value):
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def _order_window(body):
    start, end = _instant(body.get("starts_at")), _instant(body.get("ends_at"))
    if start is None or end is None or start < end:
        return
    if start == end:
        try:
            body["ends_at"] = (end + datetime.timedelta(seconds=1)).isoformat()
        except OverflowError:  # the last second of year 9999
            body["starts_at"] = (start - datetime.timedelta(seconds=1)).isoformat()
    else:
        body["starts_at"], body["ends_at"] = body["ends_at"], body["starts_at"]


def _fresh_create(body):
    if not isinstance(body, dict):
        return
    if isinstance(body.get("code"), str):
        body["code"] = _unique(body["code"], 64)
    if isinstance(body.get("prefix"), str):
        body["prefix"] = _unique(body["prefix"], 20)
    if isinstance(body.get("batch"), str):
        body["batch"] = _unique(body["batch"], 64)
    _order_window(body)


def _bound_to_body(value, body, limit):
    """`value` with a suffix derived from `body`: the same key or reference
    sent again with the same body stays the same (a replay, answered with
    the first response), one sent with another body becomes another key.
    Stateless on purpose: a pass that runs again is a new schemathesis
    process, while the server still holds the keys of the first run."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:12]
    suffix = f"-{digest}"
    return value[: max(0, limit - len(suffix))] + suffix


def _fresh_key(get, put, body, limit):
    value = get()
    if isinstance(value, str) and value:
        put(_bound_to_body(value, body, limit))


def _is_positive(case):
    meta = case.meta
    return meta is not None and meta.generation.mode == GenerationMode.POSITIVE


@schemathesis.hook
def before_call(context, case, kwargs):
    positive = _is_positive(case)
    operation = (case.method.upper(), case.operation.path)
    if operation in CREATES and positive:
        _fresh_create(case.body)
    elif operation == CHANGE and positive and isinstance(case.body, dict):
        code = str((case.path_parameters or {}).get("code", "")).strip().upper()
        if code not in _coupons:
            case.body.pop("per_user_limit", None)
            case.body.pop("rules", None)
        if code not in _single:
            case.body.pop("tracked", None)
        _order_window(case.body)
    elif operation in IDEMPOTENT and positive and case.headers and "Idempotency-Key" in case.headers:
        headers = case.headers
        _fresh_key(
            lambda: headers["Idempotency-Key"],
            lambda v: headers.__setitem__("Idempotency-Key", v),
            [case.operation.path, case.body, str(headers.get("Authorization", ""))],
            255,
        )
    elif operation in REFERENCED and positive and isinstance(case.body, dict):
        body = case.body
        if operation == DEBIT and sum(body.get(k) is not None for k in VOUCHER_PAIR) == 1:
            for k in VOUCHER_PAIR:
                body.pop(k, None)
        unreferenced = {k: v for k, v in body.items() if k != "reference"}
        _fresh_key(
            lambda: body.get("reference"),
            lambda v: body.__setitem__("reference", v),
            [case.operation.path, unreferenced],
            100,
        )


CALL_LOG = os.environ.get("FUZZ_CALL_LOG")


@schemathesis.hook
def after_call(context, case, response):
    """With FUZZ_CALL_LOG set, one JSON line per call: whether the case was
    positive, the operation, the status and the error code, so a warning
    about refused positive data can be traced to the refusals themselves."""
    if (case.method.upper(), case.operation.path) == ("POST", "/admin/codes") and response.status_code == 201:
        try:
            created = response.json()
            name = str(created.get("code", "")).upper()
            _single.add(name)
            if created.get("kind") == "coupon":
                _coupons.add(name)
        except Exception:
            pass
    if not CALL_LOG:
        return
    try:
        error = (response.json() or {}).get("error", {}).get("code", "")
        message = (response.json() or {}).get("error", {}).get("message", "")
    except Exception:
        error = message = ""
    meta = case.meta
    line = {
        "positive": _is_positive(case),
        "phase": str(meta.phase.name.value) if meta is not None else "",
        "operation": f"{case.method.upper()} {case.operation.path}",
        "status": response.status_code,
        "error": error,
        "message": message[:160],
    }
    with open(CALL_LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")
