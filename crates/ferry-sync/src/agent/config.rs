//! The agent's configuration (agent.toml): volumes, key, limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Result, SyncError};
use crate::proto;

/// One served volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// A directory (file mode) or an image file / block device (block mode).
    pub path: PathBuf,
    pub read_only: bool,
    /// Whether a session may start an inotify watch here (`--watch`,
    /// `--follow` from this volume). A watch holds kernel memory and one of
    /// the user's few inotify instances for as long as the session lasts:
    /// off by default on read-only volumes, whose sessions otherwise change
    /// nothing.
    pub watch: bool,
}

/// The bounds of an agent facing the network (see the module docs and
/// examples/agent.toml).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, in the handshake or in a session; more are
    /// closed at once with a "busy" error.
    pub max_connections: usize,
    /// Time from accept to an opened volume.
    pub handshake_timeout: Duration,
    /// An authenticated session that moves no byte for this long is closed.
    pub idle_timeout: Duration,
    /// Sessions holding an inotify watch at once.
    pub max_watches: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // A sync uses one connection per agent side; a follow, one per
            // destination. 64 leaves room for a fleet update relaying to many
            // agents while bounding threads and the memory of sessions.
            max_connections: 64,
            // A handshake is three round trips: seconds even on a slow link.
            handshake_timeout: Duration::from_secs(10),
            // A client scanning a large tree of its own leaves the other
            // side's connection quiet for minutes.
            idle_timeout: Duration::from_secs(3600),
            // The default inotify limit is 128 instances per user.
            max_watches: 8,
        }
    }
}

/// A checked agent configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// The MAC key derived from the configured pre-shared key.
    pub key: [u8; 32],
    pub volumes: BTreeMap<String, Volume>,
    pub limits: Limits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: toml::Spanned<String>,
    key: Option<toml::Spanned<String>>,
    key_file: Option<toml::Spanned<String>>,
    max_connections: Option<toml::Spanned<u64>>,
    handshake_timeout_secs: Option<toml::Spanned<u64>>,
    idle_timeout_secs: Option<toml::Spanned<u64>>,
    max_watches: Option<toml::Spanned<u64>>,
    #[serde(default)]
    volumes: BTreeMap<toml::Spanned<String>, RawVolume>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    path: toml::Spanned<String>,
    #[serde(default)]
    read_only: bool,
    watch: Option<bool>,
}

/// Shortest pre-shared key accepted (ferry-conf's rule for keys and tokens).
pub const MIN_KEY_LEN: usize = ferry_conf::MIN_TOKEN_CHARS;

impl AgentConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<AgentConfig> {
        let text =
            std::fs::read_to_string(path).map_err(|e| SyncError::io("read config", path, e))?;
        AgentConfig::parse(&text, path)
    }

    /// Checks config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig> {
        let src = ferry_conf::Source { path, text };
        let config_error = |e: ferry_conf::Invalid| SyncError::Config {
            path: e.path,
            line: e.line,
            column: e.column,
            message: e.message,
        };
        let err =
            |span: std::ops::Range<usize>, message: String| config_error(src.error(span, message));
        let raw: RawConfig = toml::from_str(text).map_err(|e| config_error(src.toml(&e)))?;
        let listen: SocketAddr = raw.listen.get_ref().parse().map_err(|e| {
            err(
                raw.listen.span(),
                format!(
                    "listen: {:?} is not an address:port ({e})",
                    raw.listen.get_ref()
                ),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        // A key file is refused unless only its owner may read it (as ssh
        // does with a private key): a key others can read is no secret.
        let psk = ferry_conf::SecretKeys {
            owner: "",
            key: "key",
            inline: raw.key.as_ref(),
            file: raw.key_file.as_ref(),
            min_chars: MIN_KEY_LEN,
        }
        .required(base, 0..0)
        .map_err(|e| config_error(src.locate(e)))?;
        let mut volumes = BTreeMap::new();
        for (name, v) in raw.volumes {
            let n = name.get_ref();
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(err(
                    name.span(),
                    format!("volume name {n:?}: use letters, digits, '-', '_', '.'"),
                ));
            }
            if v.path.get_ref().is_empty() {
                return Err(err(v.path.span(), format!("volume {n}: empty path")));
            }
            volumes.insert(
                n.clone(),
                Volume {
                    path: base.join(v.path.get_ref()),
                    read_only: v.read_only,
                    watch: v.watch.unwrap_or(!v.read_only),
                },
            );
        }
        if volumes.is_empty() {
            return Err(err(0..0, "no [volumes.NAME] defined".into()));
        }
        let mut limits = Limits::default();
        let count = |v: &Option<toml::Spanned<u64>>, name: &str, max: u64| match v {
            None => Ok(None),
            Some(n) if (1..=max).contains(n.get_ref()) => Ok(Some(*n.get_ref())),
            Some(n) => Err(err(
                n.span(),
                format!("{name}: {} is not between 1 and {max}", n.get_ref()),
            )),
        };
        if let Some(n) = count(&raw.max_connections, "max_connections", 100_000)? {
            limits.max_connections = n as usize;
        }
        if let Some(n) = count(&raw.max_watches, "max_watches", 100_000)? {
            limits.max_watches = n as usize;
        }
        if let Some(n) = count(&raw.handshake_timeout_secs, "handshake_timeout_secs", 3600)? {
            limits.handshake_timeout = Duration::from_secs(n);
        }
        if let Some(n) = count(&raw.idle_timeout_secs, "idle_timeout_secs", 7 * 86400)? {
            limits.idle_timeout = Duration::from_secs(n);
        }
        Ok(AgentConfig {
            listen,
            key: proto::derive_key(psk.expose()),
            volumes,
            limits,
        })
    }
}
