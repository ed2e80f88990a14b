//! Who is signed in to the UI, and how fast a client may guess keys.
//!
//! - **Sessions** ([`Sessions`]): `/login` checks an API key once and hands
//!   the browser a random session id (256 bits) in its cookie; the key itself
//!   never sits in the cookie, so a leaked cookie (a proxy log, a stolen
//!   profile) ends with its session instead of giving away the key. The
//!   server keeps only the sha256 of each id, with the key's role and an
//!   expiry. Sessions end at sign-out, after [`SESSION_TTL`], and when the
//!   server stops (they live in memory: API keys are read once at start, so
//!   a restart with a new key file is also how a key is revoked, and it ends
//!   every session at once).
//! - **Sign-in attempts** ([`LoginLimiter`]): every attempt takes a token
//!   from its client's bucket ([`LOGIN_BURST`] tokens, one back every
//!   [`LOGIN_REFILL`]); an empty bucket is answered 429 with `Retry-After`
//!   before the key is even looked at, and a good key gives its token back.
//!   Clients are told apart by address (an IPv6 client by its /64, which one
//!   machine usually holds whole). The table holds at most
//!   [`MAX_LOGIN_CLIENTS`] clients; when a hostile client with many addresses
//!   fills it, new addresses share one overflow bucket, so it cannot grow
//!   the table nor escape the limit.
//!
//! Both are plain data behind a mutex, driven with an explicit `now` so the
//! tests below move time by hand.

use crate::api::guard::Role;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed sign-ins a client may make in a row before it must wait.
pub(super) const LOGIN_BURST: f64 = 5.0;
/// How long a client waits for each further attempt: three a minute at most.
pub(super) const LOGIN_REFILL: Duration = Duration::from_secs(20);
/// Clients whose failures are remembered; more share the overflow bucket.
pub(super) const MAX_LOGIN_CLIENTS: usize = 4096;
/// How long a session lasts: a working day, then the key is asked again.
pub(super) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; past it the oldest ends (only key holders make them).
pub(super) const MAX_SESSIONS: usize = 10_000;

/// What the UI keeps between requests: sessions and sign-in buckets.
#[derive(Debug, Default)]
pub(crate) struct UiAuth {
    pub(super) sessions: Mutex<Sessions>,
    pub(super) logins: Mutex<LoginLimiter>,
}

impl UiAuth {
    pub(super) fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // A panic while holding the lock left plain data behind; keep serving.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn logins(&self) -> std::sync::MutexGuard<'_, LoginLimiter> {
        self.logins.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A signed-in browser, as the server remembers it.
#[derive(Clone, Copy, Debug)]
struct SessionEntry {
    role: Role,
    expires: Instant,
}

/// Signed-in browsers by the sha256 of their session id.
#[derive(Debug)]
pub(crate) struct Sessions {
    by_id_hash: HashMap<[u8; 32], SessionEntry>,
    limit: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::with_limit(MAX_SESSIONS)
    }
}

fn id_hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    fn with_limit(limit: usize) -> Sessions {
        Sessions {
            by_id_hash: HashMap::new(),
            limit,
        }
    }

    /// Starts a session for a key of `role`; returns its id (64 hex digits).
    pub(super) fn start(&mut self, role: Role, now: Instant) -> String {
        if self.by_id_hash.len() >= self.limit {
            self.by_id_hash.retain(|_, s| s.expires > now);
        }
        if self.by_id_hash.len() >= self.limit
            && let Some(oldest) = self
                .by_id_hash
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(hash, _)| *hash)
        {
            self.by_id_hash.remove(&oldest);
        }
        let id = hex::encode(rand::random::<[u8; 32]>());
        let entry = SessionEntry {
            role,
            expires: now + SESSION_TTL,
        };
        self.by_id_hash.insert(id_hash(&id), entry);
        id
    }

    /// The role of a live session; an expired one is forgotten.
    pub(super) fn role_of(&mut self, id: &str, now: Instant) -> Option<Role> {
        let hash = id_hash(id);
        let entry = *self.by_id_hash.get(&hash)?;
        if entry.expires <= now {
            self.by_id_hash.remove(&hash);
            return None;
        }
        Some(entry.role)
    }

    /// Ends a session (sign-out); an unknown id is no error.
    pub(super) fn end(&mut self, id: &str) {
        self.by_id_hash.remove(&id_hash(id));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id_hash.len()
    }
}

/// A client's sign-in attempts: tokens left, as of `updated`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Bucket {
        Bucket {
            tokens: LOGIN_BURST,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned =
            now.saturating_duration_since(self.updated).as_secs_f64() / LOGIN_REFILL.as_secs_f64();
        self.tokens = (self.tokens + earned).min(LOGIN_BURST);
        self.updated = now;
    }

    /// Takes a token, or says how long until there is one.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(LOGIN_REFILL.mul_f64(1.0 - self.tokens))
        }
    }

    fn is_full(&self, now: Instant) -> bool {
        let mut copy = *self;
        copy.refill(now);
        copy.tokens >= LOGIN_BURST
    }
}

/// Whom a bucket belongs to: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Client {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
    /// No address is known (the in-process API): one bucket for all.
    Unknown,
}

impl Client {
    pub(super) fn of(ip: Option<IpAddr>) -> Client {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => Client::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => {
                let mut prefix = [0; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Client::V6Prefix(prefix)
            }
            None => Client::Unknown,
        }
    }
}

/// Sign-in buckets by client, bounded.
#[derive(Debug)]
pub(crate) struct LoginLimiter {
    buckets: HashMap<Client, Bucket>,
    /// Shared by every client that found the table full.
    overflow: Option<Bucket>,
    limit: usize,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter::with_limit(MAX_LOGIN_CLIENTS)
    }
}

impl LoginLimiter {
    fn with_limit(limit: usize) -> LoginLimiter {
        LoginLimiter {
            buckets: HashMap::new(),
            overflow: None,
            limit,
        }
    }

    /// Takes one attempt for `client`: `Err(wait)` when it must wait first.
    /// Call [`LoginLimiter::succeeded`] when the key was good.
    pub(super) fn attempt(&mut self, client: Client, now: Instant) -> Result<(), Duration> {
        if let Some(bucket) = self.buckets.get_mut(&client) {
            return bucket.take(now);
        }
        if self.buckets.len() >= self.limit {
            // Clients with a full bucket again are as good as new: forget them.
            self.buckets.retain(|_, b| !b.is_full(now));
        }
        if self.buckets.len() >= self.limit {
            return self
                .overflow
                .get_or_insert_with(|| Bucket::full(now))
                .take(now);
        }
        self.buckets
            .entry(client)
            .or_insert_with(|| Bucket::full(now))
            .take(now)
    }

    /// A good key: the client's attempt is given back, its slate wiped.
    pub(super) fn succeeded(&mut self, client: Client, now: Instant) {
        if self.buckets.remove(&client).is_none()
            && let Some(overflow) = &mut self.overflow
        {
            overflow.refill(now);
            overflow.tokens = (overflow.tokens + 1.0).min(LOGIN_BURST);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u32) -> Client {
        Client::of(Some(IpAddr::V4(std::net::Ipv4Addr::from(
            0x0a00_0000 | last,
        ))))
    }

    #[test]
    fn a_client_guessing_keys_waits_and_others_do_not() {
        let mut limiter = LoginLimiter::default();
        let now = Instant::now();
        for _ in 0..5 {
            assert!(limiter.attempt(v4(1), now).is_ok());
        }
        for _ in 0..1000 {
            let wait = limiter.attempt(v4(1), now).unwrap_err();
            assert!(wait > Duration::ZERO && wait <= LOGIN_REFILL, "{wait:?}");
        }
        // Refused attempts took nothing: one refill gives exactly one more.
        assert!(limiter.attempt(v4(1), now + LOGIN_REFILL).is_ok());
        assert!(limiter.attempt(v4(1), now + LOGIN_REFILL).is_err());
        assert!(limiter.attempt(v4(2), now).is_ok());
        // A good key gives the slate back.
        limiter.succeeded(v4(1), now + LOGIN_REFILL);
        assert!(limiter.attempt(v4(1), now + LOGIN_REFILL).is_ok());
    }

    #[test]
    fn ipv6_clients_are_told_apart_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Client::of(Some(a)), Client::of(Some(b)));
        assert_ne!(Client::of(Some(a)), Client::of(Some(c)));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Client::of(Some(mapped)), v4(1));
    }

    #[test]
    fn many_addresses_cannot_grow_the_table_nor_escape_the_limit() {
        let mut limiter = LoginLimiter::with_limit(64);
        let now = Instant::now();
        let mut refused = 0;
        for address in 0..10_000 {
            if limiter.attempt(v4(address), now).is_err() {
                refused += 1;
            }
            assert!(limiter.len() <= 64);
        }
        // 64 clients of 5 tries, then 5 for the whole overflow.
        assert_eq!(refused, 10_000 - 64 - 5);
        // Clients whose buckets refilled are forgotten, making room again.
        let later = now + LOGIN_REFILL * 5;
        assert!(limiter.attempt(v4(20_000), later).is_ok());
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn sessions_end_at_sign_out_and_expiry_and_ids_are_random() {
        let mut sessions = Sessions::default();
        let now = Instant::now();
        let a = sessions.start(Role::Operator, now);
        let b = sessions.start(Role::ReadOnly, now);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(sessions.role_of(&a, now), Some(Role::Operator));
        assert_eq!(sessions.role_of(&b, now), Some(Role::ReadOnly));
        assert_eq!(sessions.role_of("garbage", now), None);
        assert_eq!(sessions.role_of(&a[..63], now), None);
        sessions.end(&a);
        assert_eq!(sessions.role_of(&a, now), None);
        assert_eq!(sessions.role_of(&b, now + SESSION_TTL), None);
        assert_eq!(sessions.len(), 0, "an expired session is forgotten");
    }

    #[test]
    fn the_session_table_is_bounded_and_drops_the_oldest() {
        let mut sessions = Sessions::with_limit(3);
        let start = Instant::now();
        let ids: Vec<String> = (0..5u64)
            .map(|i| sessions.start(Role::Admin, start + Duration::from_secs(i)))
            .collect();
        assert_eq!(sessions.len(), 3);
        let now = start + Duration::from_secs(5);
        assert_eq!(sessions.role_of(&ids[0], now), None);
        assert_eq!(sessions.role_of(&ids[1], now), None);
        assert_eq!(sessions.role_of(&ids[4], now), Some(Role::Admin));
    }
}
