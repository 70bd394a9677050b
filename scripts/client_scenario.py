"""The client-check scenario: a client generated from the live /openapi.json
(openapi-python-client) drives the running gateway as an app, an operator and
a checkout would, and every answer is checked. Run by scripts/client-check.sh
with the generated package on PYTHONPATH and BASE_URL, ADMIN_TOKEN and
SERVICE_TOKEN in the environment.

The client raises on any status the spec does not document, and parses every
body into the spec's models, so a spec that drifts from the server fails here.
"""

import os
import sys
import uuid

from redeem_gateway_client import AuthenticatedClient, Client
from redeem_gateway_client.api.admin import create_route, report_route
from redeem_gateway_client.api.auth import login, register
from redeem_gateway_client.api.codes import use_code
from redeem_gateway_client.api.coupons import quote_route, redeem_route
from redeem_gateway_client.api.wallet import balance, transactions
from redeem_gateway_client.models import (
    BalanceRequest,
    CodeKind,
    CouponKind,
    CouponRequest,
    CouponReward,
    CreateCouponCode,
    CreateCreditCode,
    CreditKind,
    ErrorBody,
    LoginRequest,
    Order,
    OrderLine,
    RedeemRequest,
    RegisterRequest,
    ReportRequest,
    Rules,
    UseCodeRequest,
)
from redeem_gateway_client.models.percent_discount import PercentDiscount
from redeem_gateway_client.models.percent_discount_type import PercentDiscountType

BASE = os.environ["BASE_URL"]
STEPS = 0


def check(cond, what):
    global STEPS
    STEPS += 1
    if not cond:
        print(f"[client-check] FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"[client-check] ok: {what}")


def ok(response, status, what):
    """The answer has `status` and a parsed body of the documented model."""
    check(
        response.status_code == status and response.parsed is not None and not isinstance(response.parsed, ErrorBody),
        f"{what}: {response.status_code} (want {status}) {response.content[:300]!r}",
    )
    return response.parsed


def authed(token):
    return AuthenticatedClient(base_url=BASE, token=token, raise_on_unexpected_status=True)


def main():
    run = uuid.uuid4().hex[:8].upper()
    anon = Client(base_url=BASE, raise_on_unexpected_status=True)
    admin = authed(os.environ["ADMIN_TOKEN"])
    service = authed(os.environ["SERVICE_TOKEN"])

    # A user registers and logs in.
    username = f"client_{run.lower()}"
    password = "a-long-password"
    reg = ok(register.sync_detailed(client=anon, body=RegisterRequest(username=username, password=password)), 201, "register")
    check(reg.username == username and reg.user_id > 0, "register answers the account")
    logged = ok(login.sync_detailed(client=anon, body=LoginRequest(username=username, password=password)), 200, "login")
    check(logged.token_type.lower() == "bearer" and logged.expires_in > 0, "login answers a bearer token")
    user = authed(logged.access_token)

    # A bad login is a documented 401 with the error body.
    bad = login.sync_detailed(client=anon, body=LoginRequest(username=username, password="wrong-password"))
    check(bad.status_code == 401 and isinstance(bad.parsed, ErrorBody), "a wrong password is 401 ErrorBody")
    check(bad.parsed.error.code == "invalid_credentials", "its code is invalid_credentials")

    # The operator creates a credit code and a coupon.
    credit_name = f"CC{run}"
    credit = ok(
        create_route.sync_detailed(
            client=admin, body=CreateCreditCode(code=credit_name, kind=CreditKind.CREDIT, amount=250_000, limit=10)
        ),
        201,
        "create a credit code",
    )
    check(credit.code == credit_name and credit.amount == 250_000 and credit.limit == 10, "the credit code as asked")
    coupon_name = f"CP{run}"
    coupon = ok(
        create_route.sync_detailed(
            client=admin,
            body=CreateCouponCode(
                code=coupon_name,
                kind=CouponKind.COUPON,
                limit=5,
                reward=CouponReward(kind=PercentDiscount(percent=10, type_=PercentDiscountType.PERCENT), max_discount=30_000),
                rules=Rules(categories=["shoes"]),
            ),
        ),
        201,
        "create a coupon",
    )
    check(coupon.kind == CodeKind.COUPON, "the coupon's kind")

    # The user redeems the credit code, reads the balance and the ledger.
    redeemed = ok(use_code.sync_detailed(client=user, body=UseCodeRequest(code=credit_name.lower())), 200, "redeem")
    check(redeemed.amount == 250_000 and redeemed.balance == 250_000, "credited 250000")
    again = use_code.sync_detailed(client=user, body=UseCodeRequest(code=credit_name))
    check(again.status_code == 409 and again.parsed.error.code == "already_redeemed", "a second redeem is 409")
    check(again.parsed.redemption is not None and again.parsed.redemption.amount == 250_000, "with the redemption")
    bal = ok(balance.sync_detailed(client=user, body=BalanceRequest()), 200, "balance")
    check(bal.balance == 250_000 and bal.user_id == reg.user_id, "the balance is 250000")
    page = ok(transactions.sync_detailed(client=user, limit=10), 200, "transactions")
    check(len(page.items) == 1 and page.items[0].amount == 250_000, "one ledger entry of 250000")

    # The user quotes the coupon; the checkout (a service) redeems it.
    order = Order(
        number=f"ORD-{run}",
        payment_method="card",
        lines=[
            OrderLine(sku="A1", category="shoes", unit_price=200_000, quantity=2),
            OrderLine(sku="B2", category="books", unit_price=50_000, quantity=1),
        ],
    )
    quote = ok(quote_route.sync_detailed(client=user, body=CouponRequest(code=coupon_name, order=order)), 200, "quote")
    # 10% of the shoes (400000) is 40000, capped at 30000.
    check(quote.eligible and quote.discount == 30_000 and quote.new_total == 420_000, "quote: 30000 off 450000")
    used = ok(
        redeem_route.sync_detailed(
            client=service, body=RedeemRequest(code=coupon_name, user_id=reg.user_id, order=order)
        ),
        200,
        "coupon redeem (service)",
    )
    check(used.discount == 30_000 and not used.replayed, "the checkout's redeem gives the quoted discount")
    replay = ok(
        redeem_route.sync_detailed(
            client=service, body=RedeemRequest(code=coupon_name, user_id=reg.user_id, order=order)
        ),
        200,
        "coupon redeem again",
    )
    check(replay.replayed and replay.redemption_id == used.redemption_id, "a retry replays the same use")

    # The operator's reports.
    report = ok(report_route.sync_detailed(client=admin, body=ReportRequest(code=credit_name)), 200, "credit report")
    check(report.redeemed == 1 and report.remaining == 9 and report.total_credited == 250_000, "credit report counts")
    report = ok(report_route.sync_detailed(client=admin, body=ReportRequest(code=coupon_name)), 200, "coupon report")
    check(report.redeemed == 1 and report.total_discounted == 30_000, "coupon report counts")

    # Refusals the spec documents come back as ErrorBody.
    refused = use_code.sync_detailed(client=user, body=UseCodeRequest(code="NO-SUCH-CODE-" + run))
    check(refused.status_code == 404 and refused.parsed.error.code == "code_not_found", "unknown code is 404")
    forbidden = report_route.sync_detailed(client=user, body=ReportRequest(code=credit_name))
    check(forbidden.status_code == 403 and forbidden.parsed.error.code == "forbidden", "a user's report is 403")
    print(f"[client-check] scenario passed: {STEPS} checks")


if __name__ == "__main__":
    main()
