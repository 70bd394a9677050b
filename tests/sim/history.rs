//! The history: every request the clients sent, to which gateway, when, and
//! what came back (or that nothing did). Attempts of one logical operation
//! (a client retrying) share an `op` number. Times are wall-clock UTC so they
//! compare with PostgreSQL's `created_at` (same machine, same clock).

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    CreditUse,
    VoucherLogin,
    CouponQuote,
    CouponRedeem,
    CouponCancel,
    Pause,
    Resume,
    End,
    RaiseLimit,
    LowerLimit,
    Balance,
    Transactions,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::CreditUse => "credit_use",
            Kind::VoucherLogin => "voucher_login",
            Kind::CouponQuote => "coupon_quote",
            Kind::CouponRedeem => "coupon_redeem",
            Kind::CouponCancel => "coupon_cancel",
            Kind::Pause => "admin_pause",
            Kind::Resume => "admin_resume",
            Kind::End => "admin_end",
            Kind::RaiseLimit => "admin_raise_limit",
            Kind::LowerLimit => "admin_lower_limit",
            Kind::Balance => "balance_read",
            Kind::Transactions => "transactions_read",
        }
    }

    /// Operations that take a slot of a code.
    pub fn uses_slot(self) -> bool {
        matches!(self, Kind::CreditUse | Kind::VoucherLogin | Kind::CouponRedeem)
    }
}

/// What an answer means, whatever route gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 (a voucher issued); `id` = the redemption, voucher or coupon use.
    Ok,
    /// 409 already_redeemed / voucher already_issued.
    Already,
    /// Already, and the answer names the holder's committed use (`id`): a voucher
    /// login's already_issued carries the voucher, so the client learns what it won.
    AlreadyWithUse,
    /// 410 sold_out / voucher campaign_full.
    SoldOut,
    /// 422 not_eligible / voucher not_active.
    NotEligible,
    /// 503 / voucher try_again: the client may retry.
    TryAgain,
    /// Any other status, with its error code.
    Other(u16, String),
    /// Timed out or the connection failed: no answer at all.
    Unanswered(String),
}

impl Answer {
    /// A final refusal: the client is told it will not get this (404, 410, 422, ...).
    pub fn is_definite_failure(&self) -> bool {
        match self {
            Answer::SoldOut | Answer::NotEligible => true,
            // 409 here is per_user_limit or an order of someone else (already_redeemed is `Already`).
            Answer::Other(status, _) => (400..500).contains(status) && *status != 429,
            _ => false,
        }
    }

    pub fn label(&self) -> String {
        match self {
            Answer::Ok => "200".into(),
            Answer::Already => "409 already".into(),
            Answer::AlreadyWithUse => "already, with the use".into(),
            Answer::SoldOut => "410 sold_out".into(),
            Answer::NotEligible => "422 not_eligible".into(),
            Answer::TryAgain => "503 try_again".into(),
            Answer::Other(s, c) => format!("{s} {c}"),
            Answer::Unanswered(why) => format!("no answer ({why})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub seq: usize,
    pub op: u64,
    pub client: usize,
    pub kind: Kind,
    pub gateway: usize,
    pub code: Option<String>,
    pub user: Option<i64>,
    /// Coupon order number.
    pub order: Option<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub answer: Answer,
    /// Redemption / voucher / coupon-use id from a 200.
    pub id: Option<i64>,
    /// A number worth keeping from the answer: a balance, a new limit.
    pub value: Option<i64>,
}

impl Event {
    pub fn describe(&self) -> String {
        format!(
            "#{} op{} {} {} gw{} code={} user={} order={} [{} .. {}] -> {}{}{}",
            self.seq,
            self.op,
            match self.client {
                OPERATOR => "operator".to_string(),
                PROBE => "probe".to_string(),
                c => format!("client{c}"),
            },
            self.kind.name(),
            self.gateway,
            self.code.as_deref().unwrap_or("-"),
            self.user.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
            self.order.as_deref().unwrap_or("-"),
            self.start.format("%H:%M:%S%.3f"),
            self.end.format("%H:%M:%S%.3f"),
            self.answer.label(),
            self.id.map(|i| format!(" id={i}")).unwrap_or_default(),
            self.value.map(|v| format!(" value={v}")).unwrap_or_default(),
        )
    }
}

/// The client number of the operator's requests and of the probes after the run.
pub const OPERATOR: usize = usize::MAX;
pub const PROBE: usize = usize::MAX - 1;

/// A fault the nemesis injected, with when it started and healed.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub kind: &'static str,
    pub target: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Default)]
pub struct History {
    events: Mutex<Vec<Event>>,
    faults: Mutex<Vec<FaultRecord>>,
}

impl History {
    pub fn record(&self, mut e: Event) {
        let mut events = self.events.lock().unwrap();
        e.seq = events.len();
        events.push(e);
    }

    pub fn fault(&self, f: FaultRecord) {
        self.faults.lock().unwrap().push(f);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Events from `seq` on.
    pub fn since(&self, seq: usize) -> Vec<Event> {
        self.events.lock().unwrap().get(seq..).map(<[Event]>::to_vec).unwrap_or_default()
    }

    pub fn faults(&self) -> Vec<FaultRecord> {
        self.faults.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Attempts by kind: (attempts, 2xx, 503/429, no answer, other).
    pub fn tally(&self) -> BTreeMap<&'static str, [usize; 5]> {
        let mut t: BTreeMap<&'static str, [usize; 5]> = BTreeMap::new();
        for e in self.events.lock().unwrap().iter() {
            let name = if e.client == PROBE { "probe (after the run)" } else { e.kind.name() };
            let row = t.entry(name).or_default();
            row[0] += 1;
            match e.answer {
                Answer::Ok => row[1] += 1,
                Answer::TryAgain | Answer::Other(429, _) => row[2] += 1,
                Answer::Unanswered(_) => row[3] += 1,
                _ => row[4] += 1,
            }
        }
        t
    }
}

/// Reads the error code of a JSON error body.
pub fn error_code(body: &Value) -> String {
    body["error"]["code"].as_str().unwrap_or("").to_string()
}
