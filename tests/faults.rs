//! Fault injection: the real binary delivers a few hundred leads to stateful CRM fakes that
//! misbehave on a seeded schedule (429 with `Retry-After`, 503 with and without it, 500,
//! connections dropped without an answer, writes committed and then failed or answered after
//! the client's timeout, slow answers, expired tokens). What must hold, checked on the fakes'
//! own stores and request logs:
//!
//! - every lead is in the CRM exactly once per idempotency key (one record per key, every
//!   key present, no lead under two keys);
//! - no request reached a throttled target before its `Retry-After` ran out;
//! - retries are bounded by the faults: a key is sent at most once more per fault it met, and
//!   a record is rewritten only by a write whose answer was lost;
//! - the ledger (`status --json`, `trace --json`) and the CRM agree.
//!
//! The seed is printed; `LEADSYNC_FAULT_SEED` replays one, `LEADSYNC_FAULT_ROUNDS` (default
//! 1) runs more seeds, `LEADSYNC_FAULT_LEADS` changes the number of leads (default 300).

mod common;
use common::{text, Deployment};
use leadsync_fakes::https_receiver::{HttpsReceiver, ReceiverOptions, Reply, ReplyEffect};
use leadsync_fakes::hubspot::{self, HubSpotFake, HubSpotFakeConfig};
use leadsync_fakes::marketo::{self, MarketoFake, MarketoFakeConfig};
use leadsync_fakes::salesforce::{Fault, SalesforceFake, SalesforceFakeConfig};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A small deterministic generator (xorshift), so a failing seed can be replayed.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seeds of this run: `LEADSYNC_FAULT_SEED` (or a default) and the ones after it.
fn seeds(default: u64) -> Vec<u64> {
    let first = env_num("LEADSYNC_FAULT_SEED", default);
    let rounds = env_num("LEADSYNC_FAULT_ROUNDS", 1).max(1);
    (0..rounds).map(|r| first + r).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn write_leads(d: &Deployment, n: usize) {
    let mut f = std::fs::File::create(d.spool().join("faults.jsonl")).unwrap();
    for i in 0..n {
        writeln!(
            f,
            "{}",
            serde_json::json!({
                "UserDetails": {"FirstName": format!("F{i}"), "LastName": format!("L{i}"),
                                "Email": format!("p{i}@example.com"), "Company": "Contoso"},
                "LeadSource": "AzureMarketplace", "ActionCode": "INS",
                "OfferTitle": format!("Offer {}", i % 5), "Description": format!("lead number {i}")
            })
        )
        .unwrap();
    }
}

/// Half a second in, the CRM answers 150 ms slower for 1.5 s.
fn slow_spell(rt: &tokio::runtime::Runtime, set_latency: impl Fn(Duration) + Send + 'static) {
    rt.spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        set_latency(Duration::from_millis(150));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        set_latency(Duration::ZERO);
    });
}

/// The lead number of a first name `F<i>` (see [`write_leads`]).
fn lead_number(first_name: Option<&str>) -> Option<usize> {
    first_name?.strip_prefix('F')?.parse().ok()
}

/// `sync --once --wait 60s` until nothing is pending (at most `max` runs).
fn sync_until_done(d: &Deployment, env: &[(&str, String)], max: usize) -> usize {
    for run in 1..=max {
        let mut cmd = d.command();
        cmd.args(["sync", "--once", "--wait", "60s"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let status = status_of(d, env);
        if status["targets"][0]["pending"] == 0 {
            return run;
        }
    }
    panic!("still pending after {max} runs of sync --once");
}

fn status_of(d: &Deployment, env: &[(&str, String)]) -> serde_json::Value {
    let mut cmd = d.command();
    cmd.args(["status", "--json"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn trace_of(d: &Deployment, env: &[(&str, String)], lead: &str) -> serde_json::Value {
    let mut cmd = d.command();
    cmd.args(["trace", lead, "--json"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every lead of `0..leads` is in the CRM exactly once, and no key twice: `records` gives
/// each stored record's key (idempotency key or e-mail) and lead number (see
/// [`write_leads`]).
fn assert_each_lead_once<'a>(
    what: &str,
    leads: usize,
    records: impl Iterator<Item = (Option<&'a str>, Option<usize>)>,
) {
    let mut keys = HashSet::new();
    let mut seen = vec![0usize; leads];
    let mut stored = 0;
    for (key, number) in records {
        stored += 1;
        let key = key.unwrap_or_else(|| panic!("{what}: a record without its key"));
        assert!(
            keys.insert(key.to_lowercase()),
            "{what}: two records under one key"
        );
        let i = number.unwrap_or_else(|| panic!("{what}: a record without its lead number"));
        seen[i] += 1;
    }
    let missing: Vec<_> = (0..leads).filter(|i| seen[*i] == 0).collect();
    let doubled: Vec<_> = (0..leads).filter(|i| seen[*i] > 1).collect();
    assert!(missing.is_empty(), "{what}: leads missing: {missing:?}");
    assert!(
        doubled.is_empty(),
        "{what}: leads stored twice: {doubled:?}"
    );
    assert_eq!(stored, leads, "{what}");
}

/// One request as a fake logged it: when it arrived, when its answer was ready, the status
/// answered and, for a throttle, the wait it asked for in seconds.
struct Logged {
    arrived: Instant,
    answered: Instant,
    status: u16,
    wait_secs: Option<u64>,
}

/// No request arrived after a throttled answer was given and before its wait ran out
/// (requests already on their way when it was given are not the client's fault: with a
/// stalled request set aside, two can be in flight at once). Returns how many throttles it
/// checked.
fn assert_retry_after_respected(log: &[Logged], what: &str) -> usize {
    let mut checked = 0;
    for t in log {
        let Some(secs) = t.wait_secs else { continue };
        if !(t.status == 429 || t.status == 503) {
            continue;
        }
        checked += 1;
        let until = t.answered + Duration::from_secs(secs);
        for later in log.iter().filter(|r| r.arrived > t.answered) {
            assert!(
                later.arrived >= until,
                "{what}: a request arrived {:?} after a {} with Retry-After: {secs} was answered",
                later.arrived.duration_since(t.answered),
                t.status
            );
        }
    }
    checked
}

const HOOK_SECRET: &str = "fault-hmac-secret";
const HOOK_TOKEN: &str = "fault-bearer-token";

/// One scripted answer per POST position; `None` is a normal answer.
fn https_schedule(rng: &mut Rng, positions: usize) -> Vec<(Reply, &'static str)> {
    let mut throttles = 0;
    let mut late = 0;
    (0..positions)
        .map(|_| {
            if rng.below(100) >= 10 {
                return (Reply::normal(), "ok");
            }
            match rng.below(8) {
                0 if throttles < 4 => {
                    throttles += 1;
                    (Reply::throttled("1"), "429+Retry-After")
                }
                1 if throttles < 4 => {
                    throttles += 1;
                    (
                        Reply::status(503).header("retry-after", "1"),
                        "503+Retry-After",
                    )
                }
                2 => (Reply::status(503), "503"),
                3 => (Reply::reset(), "reset"),
                4 => (Reply::commit_then(500), "commit-then-500"),
                5 if late < 3 => {
                    late += 1;
                    (
                        Reply::commit_then(200).after(Duration::from_millis(1500)),
                        "commit-then-timeout",
                    )
                }
                6 => (Reply::normal().after(Duration::from_millis(200)), "slow"),
                _ => (Reply::status(500), "500"),
            }
        })
        .collect()
}

#[test]
fn https_target_under_seeded_faults_delivers_each_key_once() {
    let leads = env_num("LEADSYNC_FAULT_LEADS", 300) as usize;
    for seed in seeds(20260601) {
        https_round(seed, leads);
    }
}

fn https_round(seed: u64, leads: usize) {
    let rt = runtime();
    let rx = rt
        .block_on(HttpsReceiver::start(
            ReceiverOptions::http()
                .signing_secret(HOOK_SECRET, true)
                .require_header("authorization", &format!("Bearer {HOOK_TOKEN}"))
                .return_id(),
        ))
        .unwrap();
    let mut rng = Rng::new(seed);
    let schedule = https_schedule(&mut rng, leads);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, k) in &schedule {
        *kinds.entry(k).or_default() += 1;
    }
    let faults = schedule
        .iter()
        .filter(|(_, k)| *k != "ok" && *k != "slow")
        .count();
    eprintln!("https faults: seed {seed}, {leads} leads, {faults} faults injected: {kinds:?}");
    let is_fault: Vec<bool> = schedule
        .iter()
        .map(|(_, k)| *k != "ok" && *k != "slow")
        .collect();
    rx.script(schedule.iter().map(|(r, _)| r.clone()));

    let d = Deployment::with_target(
        r#"
kind = "https"
schedule = "*/1 * * * * *"
[connection]
url = { env = "FAULT_HOOK_URL" }
allow_http = true
extended = true
[connection.auth]
type = "bearer"
token = { env = "FAULT_HOOK_TOKEN" }
[connection.signature]
secret = { env = "FAULT_HOOK_SECRET" }
[connection.http]
timeout = "1s"
[limits]
batch_size = 20
concurrency = 1
# Strictly one request at a time (no stalled request set aside): the checks below pair the
# i-th POST with the i-th scripted answer.
max_stalled = 0
[retry]
min_delay = "20ms"
max_delay = "200ms"
max_retry_after = "10s"
"#,
    );
    write_leads(&d, leads);
    let env = [
        ("FAULT_HOOK_URL", rx.url("/hook?sig=SIGNEDQUERY")),
        ("FAULT_HOOK_TOKEN", HOOK_TOKEN.to_string()),
        ("FAULT_HOOK_SECRET", HOOK_SECRET.to_string()),
    ];
    let runs = sync_until_done(&d, &env, 5);

    // Exactly once per key, every lead present, no lead under two keys.
    let stored = rx.stored();
    assert_each_lead_once(
        &format!("https seed {seed}"),
        leads,
        stored.iter().map(|s| {
            let desc = s.body["Description"].as_str().unwrap_or_default();
            let number = desc
                .strip_prefix("lead number ")
                .and_then(|n| n.parse().ok());
            (s.idempotency_key.as_deref(), number)
        }),
    );

    // Throttling: nothing arrived before a Retry-After ran out.
    let posts = rx.posts();
    // The i-th POST got the i-th scripted answer (one request at a time).
    // The receiver records arrivals only: a throttle counts from its arrival (stricter).
    let log: Vec<Logged> = posts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let ra = schedule
                .get(i)
                .filter(|(reply, _)| reply.effect == ReplyEffect::AnswerOnly)
                .and_then(|(reply, _)| {
                    reply
                        .headers
                        .iter()
                        .find(|(k, _)| k == "retry-after")
                        .and_then(|(_, v)| v.parse().ok())
                });
            Logged {
                arrived: r.arrived,
                answered: r.arrived,
                status: r.answered,
                wait_secs: ra,
            }
        })
        .collect();
    let throttles = assert_retry_after_respected(&log, &format!("https seed {seed}"));

    // Bounded retries: a key is sent once, plus once more for each fault it met.
    assert!(posts.len() >= schedule.len(), "the whole schedule was used");
    let mut per_key: HashMap<String, (usize, usize)> = HashMap::new();
    for (i, p) in posts.iter().enumerate() {
        let key = p.header("idempotency-key").unwrap().to_string();
        let e = per_key.entry(key).or_default();
        e.0 += 1;
        e.1 += usize::from(is_fault.get(i).copied().unwrap_or(false));
        assert_eq!(
            p.signature,
            leadsync_fakes::https_receiver::SignatureCheck::Valid
        );
    }
    for (key, (sent, faults_met)) in &per_key {
        assert!(
            *sent <= 1 + faults_met,
            "seed {seed}: key {key} sent {sent} times after meeting {faults_met} fault(s): {:?}",
            posts
                .iter()
                .enumerate()
                .filter(|(_, p)| p.header("idempotency-key") == Some(key.as_str()))
                .map(|(i, p)| (i, p.answered, schedule.get(i).map(|s| s.1)))
                .collect::<Vec<_>>()
        );
    }
    assert!(posts.len() <= leads + faults, "{} POSTs", posts.len());

    // The ledger agrees with the receiver.
    let status = status_of(&d, &env);
    assert_eq!(status["leads"], leads as u64);
    assert_eq!(status["targets"][0]["delivered"], leads as u64, "{status}");
    assert_eq!(status["targets"][0]["dead"], 0, "{status}");
    let mut sample_rng = Rng::new(seed ^ 0xA5A5);
    for _ in 0..25 {
        let s = &stored[sample_rng.below(stored.len() as u64) as usize];
        let lead = s.body["Leadsync"]["LeadId"].as_str().unwrap();
        let t = trace_of(&d, &env, lead);
        let del = &t["deliveries"][0];
        assert_eq!(del["state"], "delivered", "{t}");
        let crm_ref = del["crm_ref"].as_str().unwrap_or_default();
        assert!(
            crm_ref == s.id || crm_ref.ends_with(&format!("/{}", s.id)),
            "{t}"
        );
        assert_eq!(
            del["idempotency_key"].as_str(),
            s.idempotency_key.as_deref(),
            "{t}"
        );
        let sent = per_key[s.idempotency_key.as_deref().unwrap()].0;
        assert!(del["attempts"].as_u64().unwrap() as usize >= sent, "{t}");
    }
    eprintln!(
        "https faults: seed {seed}: {leads} leads delivered once each in {runs} sync run(s), \
         {} POSTs, {throttles} throttles waited out",
        posts.len()
    );
    assert!(
        posts
            .iter()
            .all(|p| p.query.as_deref() == Some("sig=SIGNEDQUERY")),
        "the URL is used as configured"
    );
}

/// One fault (or none) per coming Salesforce data request.
fn salesforce_schedule(rng: &mut Rng, positions: usize) -> Vec<Option<Fault>> {
    let mut throttles = 0;
    (0..positions)
        .map(|_| {
            if rng.below(100) >= 20 {
                return None;
            }
            Some(match rng.below(5) {
                0 if throttles < 3 => {
                    throttles += 1;
                    Fault::TooManyRequests {
                        retry_after_secs: 1,
                    }
                }
                1 => Fault::SessionExpired,
                2 => Fault::CommittedThenFailed,
                3 => Fault::Unavailable,
                _ => Fault::ServerError,
            })
        })
        .collect()
}

fn fault_name(f: &Fault) -> &'static str {
    match f {
        Fault::TooManyRequests { .. } => "429+Retry-After",
        Fault::Unavailable => "503",
        Fault::ServerError => "500",
        Fault::SessionExpired => "401-session-expired",
        Fault::RequestLimitExceeded => "403-request-limit",
        Fault::ConcurrentRequestLimit => "403-concurrent-limit",
        Fault::CommittedThenFailed => "commit-then-500",
    }
}

#[test]
fn salesforce_target_under_seeded_faults_delivers_each_key_once() {
    let leads = env_num("LEADSYNC_FAULT_LEADS", 300) as usize;
    for seed in seeds(20260602) {
        salesforce_round(seed, leads);
    }
}

fn salesforce_round(seed: u64, leads: usize) {
    const BATCH: usize = 10;
    let rt = runtime();
    let fake = Arc::new(
        rt.block_on(SalesforceFake::start(SalesforceFakeConfig::default()))
            .unwrap(),
    );
    let mut rng = Rng::new(seed);
    let schedule = salesforce_schedule(&mut rng, leads / BATCH);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for f in schedule.iter().flatten() {
        *kinds.entry(fault_name(f)).or_default() += 1;
    }
    let faults = schedule.iter().flatten().count();
    let committed = schedule
        .iter()
        .flatten()
        .filter(|f| **f == Fault::CommittedThenFailed)
        .count();
    for f in &schedule {
        match f {
            Some(f) => fake.inject(f.clone(), 1),
            None => fake.inject_after(1, Fault::ServerError, 0),
        }
    }
    // Tokens also run out by themselves, and the org is slow for a while mid-run.
    fake.set_token_lifetime(Some(Duration::from_millis(1500)));
    let slow = Arc::clone(&fake);
    slow_spell(&rt, move |d| slow.set_latency(d));
    eprintln!(
        "salesforce faults: seed {seed}, {leads} leads, {faults} faults injected: {kinds:?}, \
         plus 1.5 s token lifetime and a slow spell"
    );

    let d = Deployment::with_target(&format!(
        r#"
name = "salesforce"
kind = "salesforce"
schedule = "*/1 * * * * *"
[connection]
login_url = "{url}"
client_id = "{client_id}"
client_secret = {{ env = "FAULT_SF_SECRET" }}
[connection.http]
timeout = "5s"
[limits]
batch_size = {BATCH}
concurrency = 1
[retry]
min_delay = "20ms"
max_delay = "200ms"
max_retry_after = "10s"
"#,
        url = fake.base_url(),
        client_id = fake.config().client_id,
    ));
    write_leads(&d, leads);
    let env = [("FAULT_SF_SECRET", fake.config().client_secret.clone())];
    let runs = sync_until_done(&d, &env, 5);

    // Exactly once per external id, every lead present.
    let records = fake.records();
    let ext = leadsync_fakes::salesforce::DEFAULT_EXTERNAL_ID_FIELD;
    assert_each_lead_once(
        &format!("salesforce seed {seed}"),
        leads,
        records
            .iter()
            .map(|r| (r.get_str(ext), lead_number(r.get_str("FirstName")))),
    );

    // Throttling respected (data requests only; the token endpoint is not throttled).
    let requests = fake.requests();
    let data: Vec<_> = requests
        .iter()
        .filter(|r| !r.path.ends_with("/oauth2/token"))
        .collect();
    let log: Vec<Logged> = data
        .iter()
        .map(|r| Logged {
            arrived: r.at,
            answered: r.answered,
            status: r.status,
            wait_secs: (r.status == 429).then_some(1),
        })
        .collect();
    let throttles = assert_retry_after_respected(&log, &format!("salesforce seed {seed}"));
    assert_eq!(
        throttles,
        kinds.get("429+Retry-After").copied().unwrap_or(0),
        "every scripted 429 was met"
    );

    // Bounded: a record is rewritten only by a batch whose answer was lost (at most once per
    // such fault), and the data requests are the batches plus one retry per failure.
    let rewrites: u32 = records.iter().map(|r| r.updates).sum();
    assert!(
        records.iter().all(|r| r.updates as usize <= committed),
        "seed {seed}: a record rewritten more often than answers were lost"
    );
    assert!(rewrites as usize <= committed * BATCH);
    let expired = data.iter().filter(|r| r.status == 401).count();
    let min_batches = leads.div_ceil(BATCH);
    assert!(
        data.len() <= 2 * min_batches + faults + expired,
        "seed {seed}: {} data requests for {min_batches} batches, {faults} faults, {expired} expiries",
        data.len()
    );

    // The ledger agrees with the org.
    let status = status_of(&d, &env);
    assert_eq!(status["targets"][0]["delivered"], leads as u64, "{status}");
    assert_eq!(status["targets"][0]["dead"], 0, "{status}");
    eprintln!(
        "salesforce faults: seed {seed}: {leads} leads once each in {runs} sync run(s), \
         {} data requests, {expired} expired sessions, {rewrites} rewrites, {throttles} throttles waited out",
        data.len()
    );
}

/// One fault (or none) per coming HubSpot call: 429 windows, 423, 5xx (HTML bodies from
/// the gateway), writes committed and then failed, and one revoked-then-restored token
/// (401: the target goes down and a probe brings it back).
fn hubspot_schedule(rng: &mut Rng, positions: usize) -> Vec<Option<hubspot::Fault>> {
    use hubspot::Fault as F;
    let (mut throttles, mut unauthorized) = (0, 0);
    (0..positions)
        .map(|_| {
            if rng.below(100) >= 20 {
                return None;
            }
            Some(match rng.below(7) {
                0 if throttles < 3 => {
                    throttles += 1;
                    F::TenSecondlyRolling {
                        retry_after_secs: Some(1),
                    }
                }
                1 if unauthorized < 1 => {
                    unauthorized += 1;
                    F::Unauthorized401
                }
                2 => F::Locked423,
                3 => F::CommittedThenFailed,
                4 => F::Unavailable,
                5 => F::BadGateway,
                _ => F::ServerError,
            })
        })
        .collect()
}

#[test]
fn hubspot_target_under_seeded_faults_delivers_each_key_once() {
    let leads = env_num("LEADSYNC_FAULT_LEADS", 300) as usize;
    for seed in seeds(20261130) {
        hubspot_round(seed, leads);
    }
}

fn hubspot_round(seed: u64, leads: usize) {
    const BATCH: usize = 10;
    let rt = runtime();
    let fake = Arc::new(
        rt.block_on(HubSpotFake::start(HubSpotFakeConfig::default()))
            .unwrap(),
    );
    let mut rng = Rng::new(seed);
    let schedule = hubspot_schedule(&mut rng, leads / BATCH);
    let faults = schedule.iter().flatten().count();
    let committed = schedule
        .iter()
        .flatten()
        .filter(|f| **f == hubspot::Fault::CommittedThenFailed)
        .count();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for f in schedule.iter().flatten() {
        *kinds.entry(format!("{f:?}")).or_default() += 1;
    }
    for f in &schedule {
        match f {
            Some(f) => fake.inject(f.clone(), 1),
            None => fake.inject_after(1, hubspot::Fault::ServerError, 0),
        }
    }
    let slow = Arc::clone(&fake);
    slow_spell(&rt, move |d| slow.set_latency(d));
    eprintln!("hubspot faults: seed {seed}, {leads} leads, {faults} faults injected: {kinds:?}");
    let d = Deployment::with_target(&format!(
        r#"
name = "hubspot"
kind = "hubspot"
schedule = "*/1 * * * * *"
[connection]
base_url = "{url}"
access_token = {{ env = "FAULT_HS_TOKEN" }}
[connection.http]
timeout = "5s"
[limits]
batch_size = {BATCH}
concurrency = 1
[retry]
min_delay = "20ms"
max_delay = "200ms"
max_retry_after = "10s"
"#,
        url = fake.base_url(),
    ));
    write_leads(&d, leads);
    let env = [("FAULT_HS_TOKEN", HubSpotFakeConfig::default().token)];
    let runs = sync_until_done(&d, &env, 5);

    let contacts = fake.contacts();
    assert_each_lead_once(
        &format!("hubspot seed {seed}"),
        leads,
        contacts
            .iter()
            .map(|c| (c.get_str("email"), lead_number(c.get_str("firstname")))),
    );
    // Throttles waited out: 429 for its Retry-After, 423 for 2 s (one call at a time).
    let calls: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/crm/"))
        .collect();
    let log: Vec<Logged> = calls
        .iter()
        .map(|r| {
            let (status, wait_secs) = match r.status {
                429 => (429, Some(1)),
                423 => (429, Some(2)),
                s => (s, None),
            };
            Logged {
                arrived: r.at,
                answered: r.answered,
                status,
                wait_secs,
            }
        })
        .collect();
    let throttles = assert_retry_after_respected(&log, &format!("hubspot seed {seed}"));
    // Bounded: a contact is rewritten only by a call whose answer was lost.
    assert!(
        contacts.iter().all(|c| c.updates as usize <= committed),
        "seed {seed}: a contact rewritten more often than answers were lost"
    );
    let min_batches = leads.div_ceil(BATCH);
    assert!(
        calls.len() <= 2 * min_batches + 2 * faults,
        "seed {seed}: {} calls for {min_batches} batches and {faults} faults",
        calls.len()
    );
    let status = status_of(&d, &env);
    assert_eq!(status["targets"][0]["delivered"], leads as u64, "{status}");
    assert_eq!(status["targets"][0]["dead"], 0, "{status}");
    eprintln!(
        "hubspot faults: seed {seed}: {leads} leads once each in {runs} sync run(s), {} calls, \
         {throttles} throttles waited out",
        calls.len()
    );
}

/// One fault (or none) per coming Marketo call. Marketo answers every one with HTTP 200 and
/// a code: 615 (too many at once: a 2 s pause), 604/608/611 (retry), 602 (token expired:
/// refresh once) and a write committed and then answered 611.
fn marketo_schedule(rng: &mut Rng, positions: usize) -> Vec<Option<marketo::Fault>> {
    use marketo::Fault as F;
    let mut throttles = 0;
    (0..positions)
        .map(|_| {
            if rng.below(100) >= 20 {
                return None;
            }
            Some(match rng.below(6) {
                0 if throttles < 3 => {
                    throttles += 1;
                    F::Concurrency615
                }
                1 => F::TokenExpired602,
                2 => F::CommittedThenFailed,
                3 => F::Timeout604,
                4 => F::Unavailable608,
                _ => F::SystemError611,
            })
        })
        .collect()
}

#[test]
fn marketo_target_under_seeded_faults_delivers_each_key_once() {
    let leads = env_num("LEADSYNC_FAULT_LEADS", 300) as usize;
    for seed in seeds(20261201) {
        marketo_round(seed, leads);
    }
}

fn marketo_round(seed: u64, leads: usize) {
    const BATCH: usize = 10;
    let rt = runtime();
    let fake = Arc::new(
        rt.block_on(MarketoFake::start(MarketoFakeConfig::default()))
            .unwrap(),
    );
    let mut rng = Rng::new(seed);
    let schedule = marketo_schedule(&mut rng, leads / BATCH);
    let faults = schedule.iter().flatten().count();
    let committed = schedule
        .iter()
        .flatten()
        .filter(|f| **f == marketo::Fault::CommittedThenFailed)
        .count();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for f in schedule.iter().flatten() {
        *kinds.entry(format!("{f:?}")).or_default() += 1;
    }
    for f in &schedule {
        match f {
            Some(f) => fake.inject(*f, 1),
            None => fake.inject_after(1, marketo::Fault::SystemError611, 0),
        }
    }
    let slow = Arc::clone(&fake);
    slow_spell(&rt, move |d| slow.set_latency(d));
    eprintln!("marketo faults: seed {seed}, {leads} leads, {faults} faults injected: {kinds:?}");
    let config = MarketoFakeConfig::default();
    let d = Deployment::with_target(&format!(
        r#"
name = "marketo"
kind = "marketo"
schedule = "*/1 * * * * *"
[connection]
endpoint = "{url}"
client_id = "{client_id}"
client_secret = {{ env = "FAULT_MKTO_SECRET" }}
[connection.http]
timeout = "5s"
[limits]
batch_size = {BATCH}
concurrency = 1
[retry]
min_delay = "20ms"
max_delay = "200ms"
max_retry_after = "10s"
"#,
        url = fake.base_url(),
        client_id = config.client_id,
    ));
    write_leads(&d, leads);
    let env = [("FAULT_MKTO_SECRET", config.client_secret.clone())];
    let runs = sync_until_done(&d, &env, 5);

    let stored = fake.leads();
    assert_each_lead_once(
        &format!("marketo seed {seed}"),
        leads,
        stored
            .iter()
            .map(|l| (l.get_str("email"), lead_number(l.get_str("firstName")))),
    );
    // 615 waited out (one call at a time), on the REST calls only.
    let calls: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/rest/"))
        .collect();
    let log: Vec<Logged> = calls
        .iter()
        .map(|r| {
            let (status, wait_secs) = match r.code.as_deref() {
                Some("615") => (429, Some(2)),
                _ => (r.status, None),
            };
            Logged {
                arrived: r.at,
                answered: r.answered,
                status,
                wait_secs,
            }
        })
        .collect();
    let throttles = assert_retry_after_respected(&log, &format!("marketo seed {seed}"));
    assert!(
        stored.iter().all(|l| l.updates as usize <= committed),
        "seed {seed}: a lead rewritten more often than answers were lost"
    );
    let min_batches = leads.div_ceil(BATCH);
    assert!(
        calls.len() <= 2 * min_batches + 2 * faults,
        "seed {seed}: {} calls for {min_batches} batches and {faults} faults",
        calls.len()
    );
    // Within the instance's limits all along, and one token refresh per expiry at most.
    assert!(fake.max_calls_in_window() <= 100);
    let expired = kinds.get("TokenExpired602").copied().unwrap_or(0) as u64;
    assert!(
        fake.token_requests() <= 1 + expired,
        "{} token requests",
        fake.token_requests()
    );
    let status = status_of(&d, &env);
    assert_eq!(status["targets"][0]["delivered"], leads as u64, "{status}");
    assert_eq!(status["targets"][0]["dead"], 0, "{status}");
    eprintln!(
        "marketo faults: seed {seed}: {leads} leads once each in {runs} sync run(s), {} calls, \
         {throttles} throttles waited out",
        calls.len()
    );
}
