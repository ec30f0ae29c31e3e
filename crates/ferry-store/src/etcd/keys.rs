//! The key layout under the prefix and the value encoding of sites and
//! server states (docs/control-plane.md): what is written, and every way a
//! value read back can be corrupt.

use etcd_client::KeyValue;
use ferry_model::{Epoch, Hostname, Placement, ServerState, SiteRecord, SiteState};

use super::client::corrupt;
use super::Inner;
use crate::{JoinedServer, StoreError};

/// The keys of one prefix.
pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub(super) fn schema(&self) -> String {
        format!("{}/schema", self.prefix)
    }

    pub(super) fn sites_start(&self) -> String {
        format!("{}/sites/", self.prefix)
    }

    /// `[start, end)` of every site key ('0' is the byte after '/').
    pub(super) fn sites_range(&self) -> (String, String) {
        (self.sites_start(), format!("{}/sites0", self.prefix))
    }

    pub(super) fn site(&self, host: &str) -> String {
        format!("{}/sites/{host}", self.prefix)
    }

    pub(super) fn servers_start(&self) -> String {
        format!("{}/servers/", self.prefix)
    }

    pub(super) fn servers_range(&self) -> (String, String) {
        (self.servers_start(), format!("{}/servers0", self.prefix))
    }

    /// Pools' run-time state: `P/pools/<pool>/joined/<server>` so far.
    fn pools_start(&self) -> String {
        format!("{}/pools/", self.prefix)
    }

    pub(super) fn pools_range(&self) -> (String, String) {
        (self.pools_start(), format!("{}/pools0", self.prefix))
    }

    pub(super) fn joined(&self, pool: &str, name: &str) -> String {
        format!(
            "{}/pools/{}/joined/{}",
            self.prefix,
            escape(pool),
            escape(name)
        )
    }

    /// `[P/, P0)`: every key of the prefix (a watch's range).
    pub(super) fn all_range(&self) -> (String, String) {
        (format!("{}/", self.prefix), format!("{}0", self.prefix))
    }

    /// A router's registration (under its lease).
    pub(super) fn router(&self, name: &str) -> String {
        format!("{}/routers/{}", self.prefix, escape(name))
    }

    /// `P/fleet/seen/<name>`: the router registered once (docs: "Who must
    /// acknowledge a freeze").
    pub(super) fn fleet_seen(&self, name: &str) -> String {
        format!("{}/fleet/seen/{}", self.prefix, escape(name))
    }

    /// `P/fleet/retired/<name>`: an operator retired the router.
    pub(super) fn fleet_retired(&self, name: &str) -> String {
        format!("{}/fleet/retired/{}", self.prefix, escape(name))
    }

    /// `(pool, server)` of a joined server's key.
    pub(super) fn joined_of(&self, key: &[u8]) -> Option<(String, String)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.pools_start())?;
        let (pool, name) = rest.split_once("/joined/")?;
        Some((unescape(pool), unescape(name)))
    }

    pub(super) fn server(&self, pool: &str, server: &str) -> String {
        format!(
            "{}/servers/{}/{}",
            self.prefix,
            escape(pool),
            escape(server)
        )
    }
}

/// `%` and `/` as `%25` and `%2F`, so a name never splits the key.
fn escape(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

pub(super) fn unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (ch, len) = if tail.starts_with("%2F") {
            ('/', 3)
        } else if tail.starts_with("%25") {
            ('%', 3)
        } else {
            ('%', 1)
        };
        out.push(ch);
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

fn state_letter(state: SiteState) -> char {
    match state {
        SiteState::Active => 'a',
        SiteState::Maintenance => 'm',
        SiteState::Frozen => 'f',
    }
}

// Names every variant, so a new state in ferry-model fails to read back and the
// conformance suite says so.
fn state_from_letter(letter: &str) -> Option<SiteState> {
    [SiteState::Active, SiteState::Maintenance, SiteState::Frozen]
        .into_iter()
        .find(|s| letter.len() == 1 && letter.starts_with(state_letter(*s)))
}

/// A site's key and value; `sites_start` is `P/sites/`.
pub(super) fn decode_site_kv(sites_start: &str, kv: &KeyValue) -> Result<SiteRecord, StoreError> {
    let key = kv.key();
    let raw_host = key
        .strip_prefix(sites_start.as_bytes())
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| {
            corrupt(
                format!("site key {:?}", String::from_utf8_lossy(key)),
                "outside the sites prefix, or not UTF-8",
            )
        })?;
    decode_site(raw_host, kv.value())
}

/// `"<epoch> <state letter> <placement>"`: the placement last, so a name with
/// spaces needs no quoting.
pub(super) fn encode_site(record: &SiteRecord) -> Result<String, StoreError> {
    let placement = record.placement.to_string();
    if Placement::parse(&placement).as_ref() != Some(&record.placement) {
        return Err(StoreError::Unstorable {
            host: record.host.clone(),
            why: format!("placement {placement:?} would not read back"),
        });
    }
    Ok(format!(
        "{} {} {placement}",
        record.epoch.0,
        state_letter(record.state)
    ))
}

pub(super) fn decode_site(raw_host: &str, value: &[u8]) -> Result<SiteRecord, StoreError> {
    let what = || format!("site {raw_host:?}");
    let host = Hostname::parse(raw_host).map_err(|e| corrupt(what(), e.to_string()))?;
    if host.as_str() != raw_host {
        return Err(corrupt(
            what(),
            format!("host is not in normal form (expected {host:?})"),
        ));
    }
    let text = std::str::from_utf8(value).map_err(|e| corrupt(what(), e.to_string()))?;
    let mut fields = text.splitn(3, ' ');
    let (Some(epoch), Some(state), Some(placement)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(corrupt(
            what(),
            format!("value {text:?} is not \"EPOCH STATE PLACEMENT\""),
        ));
    };
    let epoch = epoch
        .parse::<u64>()
        .map_err(|_| corrupt(what(), format!("epoch {epoch:?} is not a number")))?;
    let state = state_from_letter(state)
        .ok_or_else(|| corrupt(what(), format!("unknown state {state:?}")))?;
    let placement = Placement::parse(placement).ok_or_else(|| {
        corrupt(
            what(),
            format!("placement {placement:?} is not pool:NAME or remote:NAME"),
        )
    })?;
    Ok(SiteRecord {
        host,
        placement,
        state,
        epoch: Epoch(epoch),
    })
}

impl Inner {
    pub(super) fn decode_site(&self, kv: &KeyValue) -> Result<SiteRecord, StoreError> {
        decode_site_kv(&self.keys.sites_start(), kv)
    }

    /// A joined server from a key under `P/pools/`; `None` for the other
    /// keys a later layout may keep there.
    pub(super) fn decode_joined(&self, kv: &KeyValue) -> Result<Option<JoinedServer>, StoreError> {
        let key = String::from_utf8_lossy(kv.key());
        let what = || format!("joined server key {key:?}");
        let rest = key
            .strip_prefix(&self.keys.pools_start())
            .ok_or_else(|| corrupt(what(), "outside the pools prefix"))?;
        let Some((pool, name)) = rest.split_once("/joined/") else {
            return Ok(None);
        };
        let raw = String::from_utf8_lossy(kv.value());
        let mut f = raw.split(' ');
        let bad = || {
            corrupt(
                what(),
                format!("value {raw:?} is not \"ADDRESS TIER WEIGHT\""),
            )
        };
        let (Some(address), Some(tier), Some(weight), None) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            return Err(bad());
        };
        Ok(Some(JoinedServer {
            pool: unescape(pool),
            name: unescape(name),
            address: address.parse().map_err(|_| bad())?,
            tier: tier.parse().map_err(|_| bad())?,
            weight: weight.parse().map_err(|_| bad())?,
        }))
    }

    pub(super) fn decode_server_state(
        &self,
        kv: &KeyValue,
    ) -> Result<(String, String, ServerState), StoreError> {
        let key = String::from_utf8_lossy(kv.key());
        let what = || format!("server state key {key:?}");
        let rest = key
            .strip_prefix(&self.keys.servers_start())
            .ok_or_else(|| corrupt(what(), "outside the servers prefix"))?;
        let (pool, server) = rest
            .split_once('/')
            .ok_or_else(|| corrupt(what(), "not POOL/SERVER"))?;
        let (pool, server) = (unescape(pool), unescape(server));
        let raw = String::from_utf8_lossy(kv.value());
        let state = [ServerState::Ready, ServerState::Drain, ServerState::Maint]
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| corrupt(what(), format!("unknown state {raw:?}")))?;
        Ok((pool, server, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(host: &str, placement: &str, state: SiteState, epoch: u64) -> SiteRecord {
        SiteRecord {
            host: Hostname::parse(host).unwrap(),
            placement: Placement::parse(placement).unwrap(),
            state,
            epoch: Epoch(epoch),
        }
    }
    use crate::StoreError;
    use ferry_model::{Epoch, Hostname, Placement, SiteRecord, SiteState};
    #[test]
    fn site_values_round_trip_and_stay_small() {
        for r in [
            rec("a.example.com", "pool:web", SiteState::Active, 0),
            rec("*.b.example", "remote:dc 2", SiteState::Frozen, u64::MAX),
            rec("c.example", "pool:a:b", SiteState::Maintenance, 42),
        ] {
            let v = encode_site(&r).unwrap();
            assert_eq!(decode_site(r.host.as_str(), v.as_bytes()).unwrap(), r);
        }
        let v = encode_site(&rec("a.example.com", "pool:web", SiteState::Frozen, 42)).unwrap();
        assert_eq!(v, "42 f pool:web");
    }

    #[test]
    fn corrupt_values_are_named() {
        for bad in [
            "",
            "1 a",
            "x a pool:web",
            "1 z pool:web",
            "1 a web",
            "1 af pool:w",
        ] {
            let err = decode_site("a.example.com", bad.as_bytes()).unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt { what, .. } if what.contains("a.example.com")),
                "{bad:?}: {err}"
            );
        }
        assert!(decode_site("A.example.com", b"1 a pool:web").is_err());
    }

    #[test]
    fn server_names_are_escaped_in_keys() {
        let keys = Keys::new("/ferry/");
        assert_eq!(keys.server("a/b", "c%d"), "/ferry/servers/a%2Fb/c%25d");
        assert_eq!(unescape("a%2Fb"), "a/b");
        assert_eq!(unescape("c%25d"), "c%d");
        assert_eq!(unescape(&escape("%2F/")), "%2F/");
    }
}
