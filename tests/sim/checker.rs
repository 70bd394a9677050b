//! The checker: after the run (faults healed, one reconciler pass, probes),
//! PostgreSQL's rows against the history, one function per invariant. Each
//! returns the violations it found; SIM_SKIP_RULES switches rules off by name.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration as ChronoDuration, Utc};

use crate::history::{Answer, Event, Kind, OPERATOR};
use crate::workload::{CodeKind, SimCode};

/// Every rule, by the name SIM_SKIP_RULES and the report use.
pub const RULES: &[&str] = &[
    "uses_within_limit",
    "no_holder_twice",
    "every_ok_backed_by_a_row",
    "no_credit_told_failure",
    "commit_acknowledged",
    "pause_binds",
    "cancel_once",
    "ledger_matches_balances",
    "reads_bounded",
    "no_slot_lost",
];

#[derive(Debug, Clone)]
pub struct Violation {
    pub rule: &'static str,
    pub code: String,
    pub detail: String,
    /// History events involved (by seq).
    pub events: Vec<usize>,
}

/// A committed use of any kind, as PostgreSQL holds it.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    pub code: String,
    pub user: i64,
    /// Coupons: the order number.
    pub order: Option<String>,
    pub ticket: i32,
    pub created_at: DateTime<Utc>,
    /// Coupons: when it was cancelled (None: applied).
    pub cancelled_at: Option<DateTime<Utc>>,
}

impl Row {
    fn holder(&self) -> String {
        match &self.order {
            Some(o) => format!("order:{o}"),
            None => self.user.to_string(),
        }
    }

    fn live_at(&self, t: DateTime<Utc>) -> bool {
        self.created_at <= t && self.cancelled_at.is_none_or(|c| c > t)
    }
}

#[derive(Debug, Clone)]
pub struct CodeState {
    pub limit: i64,
    pub per_user: i64,
}

/// What PostgreSQL holds after the run.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub codes: HashMap<String, CodeState>,
    pub rows: Vec<Row>,
    pub balances: HashMap<i64, i64>,
    /// Findings of the money queries (wallet != ledger, orphans, wrong amounts).
    pub money_problems: Vec<String>,
}

/// What the probes after the run found, per code: slots expected free
/// (limit - live uses) and uses they got before the code answered sold out.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub code: String,
    pub limit: i64,
    pub live_before: i64,
    pub got: i64,
    pub live_after: i64,
    pub events: Vec<usize>,
}

pub async fn snapshot(db: &tokio_postgres::Client) -> Snapshot {
    let mut s = Snapshot::default();
    for r in db.query("SELECT code, redemption_limit::bigint, per_user_limit::bigint FROM codes", &[]).await.unwrap() {
        s.codes.insert(r.get(0), CodeState { limit: r.get(1), per_user: r.get(2) });
    }
    let queries = [
        "SELECT r.id, c.code, r.user_id, NULL::text, r.ticket, r.created_at, NULL::timestamptz
         FROM redemptions r JOIN codes c ON c.id = r.code_id",
        "SELECT v.id, c.code, v.user_id, NULL::text, v.ticket, v.issued_at, NULL::timestamptz
         FROM vouchers v JOIN codes c ON c.id = v.code_id",
        "SELECT r.id, c.code, r.user_id, r.order_number, r.ticket, r.created_at,
                CASE WHEN r.status = 'cancelled' THEN coalesce(r.cancelled_at, r.created_at) END
         FROM coupon_redemptions r JOIN codes c ON c.id = r.code_id",
    ];
    for q in queries {
        for r in db.query(q, &[]).await.unwrap() {
            s.rows.push(Row {
                id: r.get(0),
                code: r.get(1),
                user: r.get(2),
                order: r.get(3),
                ticket: r.get(4),
                created_at: r.get(5),
                cancelled_at: r.get(6),
            });
        }
    }
    for r in db.query("SELECT user_id, balance FROM wallets", &[]).await.unwrap() {
        s.balances.insert(r.get(0), r.get(1));
    }
    let money = [
        (
            "wallet balance != the sum of its ledger rows",
            "SELECT 'user ' || w.user_id || ': balance ' || w.balance || ', ledger ' || coalesce(sum(l.amount), 0)
             FROM wallets w LEFT JOIN ledger l ON l.user_id = w.user_id
             GROUP BY w.user_id, w.balance HAVING w.balance <> coalesce(sum(l.amount), 0)",
        ),
        (
            "a redemption without its credit, or a credit without its redemption",
            "SELECT coalesce('redemption ' || r.id, 'ledger row ' || l.id)
             FROM redemptions r FULL JOIN (SELECT * FROM ledger WHERE reference LIKE 'redemption:%') l
               ON l.reference = 'redemption:' || r.id
             WHERE r.id IS NULL OR l.id IS NULL",
        ),
        (
            "a credit of another amount than its code's",
            "SELECT 'redemption ' || r.id || ': ' || l.amount || ' credited, code amount ' || c.amount
             FROM redemptions r JOIN codes c ON c.id = r.code_id JOIN ledger l ON l.reference = 'redemption:' || r.id
             WHERE l.amount <> c.amount OR r.amount <> c.amount OR l.user_id <> r.user_id",
        ),
    ];
    for (what, q) in money {
        for r in db.query(q, &[]).await.unwrap() {
            s.money_problems.push(format!("{what}: {}", r.get::<_, String>(0)));
        }
    }
    s
}

/// Everything the rules look at.
pub struct Input<'a> {
    pub codes: &'a [SimCode],
    pub events: &'a [Event],
    pub snap: &'a Snapshot,
    pub probes: &'a [ProbeResult],
    /// How long after a pause answered a use may still commit (README's bound).
    pub pause_bound: ChronoDuration,
}

impl Input<'_> {
    fn kind_of(&self, code: &str) -> Option<CodeKind> {
        self.codes.iter().find(|c| c.name == code).map(|c| c.kind)
    }

    /// The holder an event claims for: the user (credit, voucher) or the order (coupon).
    fn holder(&self, e: &Event) -> Option<(String, String)> {
        if !e.kind.uses_slot() {
            return None;
        }
        let code = e.code.clone()?;
        match e.kind {
            Kind::CouponRedeem => Some((code, format!("order:{}", e.order.as_ref()?))),
            _ => Some((code, e.user?.to_string())),
        }
    }

    fn attempts_by_holder(&self) -> HashMap<(String, String), Vec<&Event>> {
        let mut m: HashMap<(String, String), Vec<&Event>> = HashMap::new();
        for e in self.events {
            if let Some(h) = self.holder(e) {
                m.entry(h).or_default().push(e);
            }
        }
        m
    }
}

/// One invariant: the violations of it in a run.
type Rule = fn(&Input) -> Vec<Violation>;

pub fn check_all(input: &Input, skip: &[String]) -> Vec<Violation> {
    let rules: [(&str, Rule); 10] = [
        ("uses_within_limit", uses_within_limit),
        ("no_holder_twice", no_holder_twice),
        ("every_ok_backed_by_a_row", every_ok_backed_by_a_row),
        ("no_credit_told_failure", no_credit_told_failure),
        ("commit_acknowledged", commit_acknowledged),
        ("pause_binds", pause_binds),
        ("cancel_once", cancel_once),
        ("ledger_matches_balances", ledger_matches_balances),
        ("reads_bounded", reads_bounded),
        ("no_slot_lost", no_slot_lost),
    ];
    rules.iter().filter(|(name, _)| !skip.iter().any(|s| s == name)).flat_map(|(_, rule)| rule(input)).collect()
}

/// Never more live uses than the limit in force: at the end, and at every
/// moment a limit change answered (a lowered limit is exact at once).
pub fn uses_within_limit(input: &Input) -> Vec<Violation> {
    let mut out = Vec::new();
    for c in input.codes {
        let Some(state) = input.snap.codes.get(&c.name) else { continue };
        let rows: Vec<&Row> = input.snap.rows.iter().filter(|r| r.code == c.name).collect();
        let live = rows.iter().filter(|r| r.cancelled_at.is_none()).count() as i64;
        if live > state.limit {
            out.push(Violation {
                rule: "uses_within_limit",
                code: c.name.clone(),
                detail: format!("{live} live uses, limit {}", state.limit),
                events: vec![],
            });
        }
        for r in rows.iter().filter(|r| r.cancelled_at.is_none() && r.ticket as i64 >= state.limit) {
            out.push(Violation {
                rule: "uses_within_limit",
                code: c.name.clone(),
                detail: format!("use {} holds ticket {} >= limit {}", r.id, r.ticket, state.limit),
                events: vec![],
            });
        }
        for e in input
            .events
            .iter()
            .filter(|e| matches!(e.kind, Kind::RaiseLimit | Kind::LowerLimit) && e.code.as_deref() == Some(&c.name))
        {
            let (Answer::Ok, Some(limit)) = (&e.answer, e.value) else { continue };
            let live_then = rows.iter().filter(|r| r.live_at(e.end)).count() as i64;
            if live_then > limit {
                out.push(Violation {
                    rule: "uses_within_limit",
                    code: c.name.clone(),
                    detail: format!("{live_then} live uses when the limit {limit} was answered"),
                    events: vec![e.seq],
                });
            }
        }
    }
    out
}

/// No user twice on a credit code or a campaign, no order twice on a coupon,
/// no user over a coupon's per-user limit; no holder told 200 for two
/// different uses.
pub fn no_holder_twice(input: &Input) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut per_holder: HashMap<(String, String), Vec<&Row>> = HashMap::new();
    let mut per_user_live: HashMap<(String, i64), i64> = HashMap::new();
    for r in &input.snap.rows {
        per_holder.entry((r.code.clone(), r.holder())).or_default().push(r);
        if r.order.is_some() && r.cancelled_at.is_none() {
            *per_user_live.entry((r.code.clone(), r.user)).or_default() += 1;
        }
    }
    for ((code, holder), rows) in &per_holder {
        if rows.len() > 1 {
            out.push(Violation {
                rule: "no_holder_twice",
                code: code.clone(),
                detail: format!(
                    "holder {holder} has {} uses: ids {:?}",
                    rows.len(),
                    rows.iter().map(|r| r.id).collect::<Vec<_>>()
                ),
                events: vec![],
            });
        }
    }
    for ((code, user), n) in per_user_live {
        let limit = input.snap.codes.get(&code).map_or(1, |c| c.per_user);
        if n > limit {
            out.push(Violation {
                rule: "no_holder_twice",
                code,
                detail: format!("user {user} holds {n} live coupon uses, per-user limit {limit}"),
                events: vec![],
            });
        }
    }
    // Two different uses answered to one holder (coupons replay the same id: compare ids).
    for ((code, holder), attempts) in input.attempts_by_holder() {
        let oks: Vec<&&Event> = attempts.iter().filter(|e| e.answer == Answer::Ok).collect();
        let distinct: HashSet<Option<i64>> = oks.iter().map(|e| e.id).collect();
        let credit_like = input.kind_of(&code) != Some(CodeKind::Coupon);
        if (credit_like && oks.len() > 1) || (!credit_like && distinct.len() > 1) {
            out.push(Violation {
                rule: "no_holder_twice",
                code,
                detail: format!(
                    "holder {holder} was answered 200 {} times ({} distinct uses)",
                    oks.len(),
                    distinct.len()
                ),
                events: oks.iter().map(|e| e.seq).collect(),
            });
        }
    }
    out
}

/// Every 200 names a use PostgreSQL holds (the holder's, with the id answered).
pub fn every_ok_backed_by_a_row(input: &Input) -> Vec<Violation> {
    let mut by_holder: HashMap<(String, String), Vec<&Row>> = HashMap::new();
    for r in &input.snap.rows {
        by_holder.entry((r.code.clone(), r.holder())).or_default().push(r);
    }
    let mut out = Vec::new();
    // An already_issued that names a use must name the holder's real one, too.
    for e in input.events.iter().filter(|e| matches!(e.answer, Answer::Ok | Answer::AlreadyWithUse)) {
        let Some(h) = input.holder(e) else { continue };
        let rows = by_holder.get(&h).map(Vec::as_slice).unwrap_or(&[]);
        let backed = match e.id {
            Some(id) => rows.iter().any(|r| r.id == id),
            None => !rows.is_empty(),
        };
        if !backed {
            out.push(Violation {
                rule: "every_ok_backed_by_a_row",
                code: h.0.clone(),
                detail: format!("holder {} was answered 200 but PostgreSQL has no such use", h.1),
                events: vec![e.seq],
            });
        }
    }
    out
}

/// Outcome of a holder that PostgreSQL holds a use for, judged from its attempts.
enum Told {
    Success,
    /// Told "already redeemed" and never 200 (after a 503 or no answer).
    AlreadyOnly,
    /// An operation of the holder ended on a definite refusal, and it was never told 200 or 409.
    Refused,
    /// Only "try again" or no answer: the client does not know (not a violation).
    Unknown,
}

fn told(attempts: &[&Event]) -> Told {
    if attempts.iter().any(|e| matches!(e.answer, Answer::Ok | Answer::AlreadyWithUse)) {
        return Told::Success;
    }
    if attempts.iter().any(|e| e.answer == Answer::Already) {
        return Told::AlreadyOnly;
    }
    // The last attempt of each operation is what its client was left with.
    let mut last: BTreeMap<u64, &Event> = BTreeMap::new();
    for e in attempts {
        last.insert(e.op, e);
    }
    if last.values().any(|e| e.answer.is_definite_failure()) {
        Told::Refused
    } else {
        Told::Unknown
    }
}

fn rows_with_attempts<'a>(input: &'a Input) -> Vec<(&'a Row, Vec<&'a Event>)> {
    let attempts = input.attempts_by_holder();
    input
        .snap
        .rows
        .iter()
        .filter(|r| input.kind_of(&r.code).is_some())
        .map(|r| (r, attempts.get(&(r.code.clone(), r.holder())).cloned().unwrap_or_default()))
        .collect()
}

/// No holder holds a use while every answer it got said it would not.
pub fn no_credit_told_failure(input: &Input) -> Vec<Violation> {
    rows_with_attempts(input)
        .into_iter()
        .filter(|(_, a)| matches!(told(a), Told::Refused))
        .map(|(r, a)| Violation {
            rule: "no_credit_told_failure",
            code: r.code.clone(),
            detail: format!(
                "use {} of holder {} committed at {}, but its client was refused",
                r.id,
                r.holder(),
                r.created_at.format("%H:%M:%S%.3f")
            ),
            events: a.iter().map(|e| e.seq).collect(),
        })
        .collect()
}

/// A commit that landed while its client was told "try again" is answered
/// 200 on the retry, not 409 (an ambiguous commit the client must be able to
/// tell from someone else's use).
pub fn commit_acknowledged(input: &Input) -> Vec<Violation> {
    rows_with_attempts(input)
        .into_iter()
        .filter(|(_, a)| matches!(told(a), Told::AlreadyOnly))
        .map(|(r, a)| Violation {
            rule: "commit_acknowledged",
            code: r.code.clone(),
            detail: format!(
                "use {} of holder {} committed; its retries were answered 409, never 200",
                r.id,
                r.holder()
            ),
            events: a.iter().map(|e| e.seq).collect(),
        })
        .collect()
}

/// Once a pause or an end has answered, no use commits (by PostgreSQL's
/// clock) until a resume is asked for; `pause_bound` is the slack allowed.
pub fn pause_binds(input: &Input) -> Vec<Violation> {
    let mut out = Vec::new();
    let attempts = input.attempts_by_holder();
    for c in input.codes {
        let mut admin: Vec<&Event> = input
            .events
            .iter()
            .filter(|e| e.client == OPERATOR && e.code.as_deref() == Some(&c.name))
            .filter(|e| matches!(e.kind, Kind::Pause | Kind::Resume | Kind::End))
            .collect();
        admin.sort_by_key(|e| e.start);
        let mut closed: Vec<(DateTime<Utc>, DateTime<Utc>, usize)> = Vec::new();
        for (i, e) in admin.iter().enumerate() {
            if e.answer != Answer::Ok || e.kind == Kind::Resume {
                continue;
            }
            let until = if e.kind == Kind::End {
                DateTime::<Utc>::MAX_UTC
            } else {
                admin[i + 1..].iter().find(|n| n.kind == Kind::Resume).map_or(DateTime::<Utc>::MAX_UTC, |n| n.start)
            };
            closed.push((e.end + input.pause_bound, until, e.seq));
        }
        for r in input.snap.rows.iter().filter(|r| r.code == c.name) {
            if let Some((from, _, seq)) =
                closed.iter().find(|(from, until, _)| r.created_at > *from && r.created_at < *until)
            {
                out.push(Violation {
                    rule: "pause_binds",
                    code: c.name.clone(),
                    detail: format!(
                        "use {} (holder {}) committed at {}, {} ms after the pause/end answered (bound {} ms)",
                        r.id,
                        r.holder(),
                        r.created_at.format("%H:%M:%S%.3f"),
                        (r.created_at - (*from - input.pause_bound)).num_milliseconds(),
                        input.pause_bound.num_milliseconds()
                    ),
                    events: std::iter::once(*seq)
                        .chain(attempts.get(&(r.code.clone(), r.holder())).into_iter().flatten().map(|e| e.seq))
                        .collect(),
                });
            }
        }
    }
    out
}

/// A coupon use is cancelled at most once: one 200 per use; a cancelled use
/// was asked to be cancelled; a use answered cancelled is cancelled.
pub fn cancel_once(input: &Input) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut oks: HashMap<i64, Vec<usize>> = HashMap::new();
    let mut asked: HashSet<i64> = HashSet::new();
    for e in input.events.iter().filter(|e| e.kind == Kind::CouponCancel) {
        let Some(id) = cancel_id(e) else { continue };
        asked.insert(id);
        if e.answer == Answer::Ok {
            oks.entry(id).or_default().push(e.seq);
        }
    }
    for (id, seqs) in &oks {
        if seqs.len() > 1 {
            out.push(Violation {
                rule: "cancel_once",
                code: String::new(),
                detail: format!("coupon use {id} was answered 'cancelled' {} times", seqs.len()),
                events: seqs.clone(),
            });
        }
    }
    for r in input.snap.rows.iter().filter(|r| r.order.is_some()) {
        if r.cancelled_at.is_some() && !asked.contains(&r.id) {
            out.push(Violation {
                rule: "cancel_once",
                code: r.code.clone(),
                detail: format!("coupon use {} is cancelled but nobody asked", r.id),
                events: vec![],
            });
        }
        if r.cancelled_at.is_none() && oks.contains_key(&r.id) {
            out.push(Violation {
                rule: "cancel_once",
                code: r.code.clone(),
                detail: format!("coupon use {} was answered cancelled but is applied", r.id),
                events: oks[&r.id].clone(),
            });
        }
    }
    out
}

fn cancel_id(e: &Event) -> Option<i64> {
    e.id
}

/// Every balance == its ledger; every redemption has exactly its credit.
pub fn ledger_matches_balances(input: &Input) -> Vec<Violation> {
    input
        .snap
        .money_problems
        .iter()
        .map(|p| Violation { rule: "ledger_matches_balances", code: String::new(), detail: p.clone(), events: vec![] })
        .collect()
}

/// Credits only ever add: no balance read (or answered with a credit) exceeds
/// the user's final balance.
pub fn reads_bounded(input: &Input) -> Vec<Violation> {
    input
        .events
        .iter()
        .filter(|e| e.answer == Answer::Ok && matches!(e.kind, Kind::Balance | Kind::CreditUse))
        .filter_map(|e| {
            let (user, seen) = (e.user?, e.value?);
            let now = input.snap.balances.get(&user).copied().unwrap_or(0);
            (seen > now).then(|| Violation {
                rule: "reads_bounded",
                code: e.code.clone().unwrap_or_default(),
                detail: format!("user {user} was shown balance {seen}, final balance {now}"),
                events: vec![e.seq],
            })
        })
        .collect()
}

/// After the reconciler ran, fresh users get exactly limit - live uses more
/// before the code answers sold out, and then live uses == limit.
pub fn no_slot_lost(input: &Input) -> Vec<Violation> {
    let mut out = Vec::new();
    for p in input.probes {
        let expected = p.limit - p.live_before;
        if p.got != expected || p.live_after != p.limit {
            out.push(Violation {
                rule: "no_slot_lost",
                code: p.code.clone(),
                detail: format!(
                    "limit {}, {} live uses before the probes: expected {} more, fresh users got {} (live after: {})",
                    p.limit, p.live_before, expected, p.got, p.live_after
                ),
                events: p.events.clone(),
            });
        }
    }
    out
}

/// Committed uses whose clients only ever heard "try again" or nothing (not a
/// violation: they do not know; reported so a run shows how often it happens).
pub fn unacknowledged(input: &Input) -> usize {
    rows_with_attempts(input).iter().filter(|(_, a)| matches!(told(a), Told::Unknown)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn event(seq: usize, op: u64, client: usize, kind: Kind, user: Option<i64>, t: i64, answer: Answer) -> Event {
        Event {
            seq,
            op,
            client,
            kind,
            gateway: 0,
            code: Some("C".into()),
            user,
            order: None,
            start: at(t),
            end: at(t + 10),
            answer,
            id: None,
            value: None,
        }
    }

    fn row(id: i64, user: i64, t: i64) -> Row {
        Row { id, code: "C".into(), user, order: None, ticket: id as i32, created_at: at(t), cancelled_at: None }
    }

    fn snap(limit: i64, rows: Vec<Row>) -> Snapshot {
        let mut s = Snapshot { rows, ..Default::default() };
        s.codes.insert("C".into(), CodeState { limit, per_user: 1 });
        s
    }

    fn codes() -> Vec<SimCode> {
        vec![SimCode { name: "C".into(), kind: CodeKind::Credit, limit: 2, amount: 1, per_user: 1 }]
    }

    fn run(rule: Rule, events: &[Event], snap: &Snapshot) -> usize {
        let codes = codes();
        rule(&Input { codes: &codes, events, snap, probes: &[], pause_bound: ChronoDuration::zero() }).len()
    }

    #[test]
    fn a_use_after_a_pause_answered_breaks_pause_binds_and_one_before_does_not() {
        let pause = event(0, 0, OPERATOR, Kind::Pause, None, 1000, Answer::Ok);
        let resume = event(1, 1, OPERATOR, Kind::Resume, None, 5000, Answer::Ok);
        let events = [pause, resume];
        assert_eq!(run(pause_binds, &events, &snap(10, vec![row(1, 7, 900)])), 0);
        assert_eq!(run(pause_binds, &events, &snap(10, vec![row(1, 7, 1200)])), 1);
        assert_eq!(run(pause_binds, &events, &snap(10, vec![row(1, 7, 6000)])), 0, "after the resume");
    }

    #[test]
    fn a_commit_answered_409_after_no_answer_is_not_acknowledged() {
        let events = [
            event(0, 0, 0, Kind::CreditUse, Some(7), 0, Answer::Unanswered("timeout".into())),
            event(1, 0, 0, Kind::CreditUse, Some(7), 100, Answer::Already),
        ];
        let s = snap(10, vec![row(1, 7, 50)]);
        assert_eq!(run(commit_acknowledged, &events, &s), 1);
        assert_eq!(run(no_credit_told_failure, &events, &s), 0);
        let refused = [
            event(0, 0, 0, Kind::CreditUse, Some(7), 0, Answer::Unanswered("timeout".into())),
            event(1, 0, 0, Kind::CreditUse, Some(7), 100, Answer::SoldOut),
        ];
        assert_eq!(run(no_credit_told_failure, &refused, &s), 1);
        let fine = [event(0, 0, 0, Kind::CreditUse, Some(7), 0, Answer::Ok)];
        assert_eq!(run(commit_acknowledged, &fine, &s) + run(no_credit_told_failure, &fine, &s), 0);
    }

    #[test]
    fn an_already_that_names_the_use_acknowledges_it_and_must_name_the_right_one() {
        let s = snap(10, vec![row(1, 7, 50)]);
        let named =
            |id| Event { id: Some(id), ..event(1, 0, 0, Kind::CreditUse, Some(7), 100, Answer::AlreadyWithUse) };
        let lost = event(0, 0, 0, Kind::CreditUse, Some(7), 0, Answer::Unanswered("timeout".into()));
        let acknowledged = [lost.clone(), named(1)];
        assert_eq!(run(commit_acknowledged, &acknowledged, &s), 0);
        assert_eq!(run(every_ok_backed_by_a_row, &acknowledged, &s), 0);
        let wrong = [lost, named(2)];
        assert_eq!(run(every_ok_backed_by_a_row, &wrong, &s), 1, "names a use the holder does not hold");
    }

    #[test]
    fn over_the_limit_twice_a_holder_and_unbacked_200s_are_caught() {
        let over = snap(1, vec![row(0, 7, 0), row(1, 8, 0)]);
        assert!(run(uses_within_limit, &[], &over) >= 1);
        let twice = snap(5, vec![row(0, 7, 0), row(1, 7, 0)]);
        assert_eq!(run(no_holder_twice, &[], &twice), 1);
        let ok = [event(0, 0, 0, Kind::CreditUse, Some(9), 0, Answer::Ok)];
        assert_eq!(run(every_ok_backed_by_a_row, &ok, &snap(5, vec![])), 1);
        assert_eq!(run(every_ok_backed_by_a_row, &ok, &snap(5, vec![row(0, 9, 0)])), 0);
    }

    #[test]
    fn probes_short_of_the_free_slots_lose_a_slot() {
        let codes = codes();
        let s = snap(10, vec![]);
        let probe = |got, live_after| ProbeResult {
            code: "C".into(),
            limit: 10,
            live_before: 7,
            got,
            live_after,
            events: vec![],
        };
        let count = |p: ProbeResult| {
            no_slot_lost(&Input {
                codes: &codes,
                events: &[],
                snap: &s,
                probes: &[p],
                pause_bound: ChronoDuration::zero(),
            })
            .len()
        };
        assert_eq!(count(probe(3, 10)), 0);
        assert_eq!(count(probe(2, 9)), 1);
    }
}
