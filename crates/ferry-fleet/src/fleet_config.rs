//! The caller's view of the fleet (`fleet.toml`): each server's exec
//! address and application files volume, the caller's token, and the
//! replicator's key. Read by `ferry exec` and `ferry update`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::client::Target;
use crate::error::{ConfigErrors, FleetError, Result};
use crate::exec_config::token_keys;

#[derive(Clone, Debug)]
pub struct FleetServer {
    pub name: String,
    /// `host:port` of the agent's exec server.
    pub exec: String,
    /// The application files as `ferry://HOST:PORT/VOLUME` (update syncs).
    pub files: Option<String>,
}

#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub path: PathBuf,
    /// Servers in name order.
    pub servers: Vec<FleetServer>,
    /// The caller's exec token, if the file holds it.
    pub token: Option<String>,
    /// The replicator's pre-shared key, if the file holds it.
    pub sync_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    sync_key: Option<Spanned<String>>,
    sync_key_file: Option<Spanned<String>>,
    servers: BTreeMap<Spanned<String>, RawServer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    exec: Spanned<String>,
    files: Option<Spanned<String>>,
}

impl FleetConfig {
    pub fn load(path: &Path) -> Result<FleetConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FleetError::io("read fleet config", path, e))?;
        FleetConfig::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<FleetConfig> {
        let errs = ConfigErrors { text, path };
        let raw: Raw = toml::from_str(text).map_err(|e| errs.toml(e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let optional = |key: &str, inline, file| {
            token_keys("", key, inline, file)
                .optional(base)
                .map(|t| t.map(|t| t.expose().to_string()))
                .map_err(|e| errs.locate(e))
        };
        let token = optional("token", &raw.token, &raw.token_file)?;
        let sync_key = optional("sync_key", &raw.sync_key, &raw.sync_key_file)?;
        if raw.servers.is_empty() {
            return Err(errs.at(0..0, "no [servers.NAME] defined"));
        }
        let mut servers = Vec::new();
        for (name, s) in &raw.servers {
            let n = name.get_ref();
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(errs.at(
                    name.span(),
                    format!("servers.{n:?}: a server name is letters, digits, '-', '_', '.'"),
                ));
            }
            let exec = s.exec.get_ref();
            if exec.parse::<std::net::SocketAddr>().is_err()
                && exec
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
            {
                return Err(errs.at(
                    s.exec.span(),
                    format!("servers.{n}.exec: {exec:?} is not host:port"),
                ));
            }
            if let Some(f) = &s.files {
                match ferry_sync::Endpoint::parse(f.get_ref()) {
                    Ok(ferry_sync::Endpoint::Remote { .. }) => {}
                    Ok(_) => {
                        return Err(errs.at(
                            f.span(),
                            format!("servers.{n}.files: expected ferry://HOST:PORT/VOLUME"),
                        ))
                    }
                    Err(e) => return Err(errs.at(f.span(), format!("servers.{n}.files: {e}"))),
                }
            }
            servers.push(FleetServer {
                name: n.clone(),
                exec: exec.clone(),
                files: s.files.as_ref().map(|f| f.get_ref().clone()),
            });
        }
        Ok(FleetConfig {
            path: path.to_path_buf(),
            servers,
            token,
            sync_key,
        })
    }

    pub fn server(&self, name: &str) -> Option<&FleetServer> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// Exec targets for `names` (every server when `None`); an unknown name
    /// is an error naming it.
    pub fn targets(&self, names: Option<&[String]>) -> std::result::Result<Vec<Target>, String> {
        let pick: Vec<&FleetServer> = match names {
            None => self.servers.iter().collect(),
            Some(ns) => {
                let mut v = Vec::new();
                for n in ns {
                    let s = self.server(n).ok_or_else(|| {
                        format!(
                            "unknown server {n:?} (the fleet has: {})",
                            self.servers
                                .iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?;
                    v.push(s);
                }
                v
            }
        };
        Ok(pick
            .into_iter()
            .map(|s| Target {
                name: s.name.clone(),
                addr: s.exec.clone(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_select() {
        let t = r#"
token = "0123456789abcdef-ops"
[servers.s1]
exec = "127.0.0.1:7801"
files = "ferry://127.0.0.1:7701/app"
[servers.s2]
exec = "127.0.0.1:7802"
"#;
        let c = FleetConfig::parse(t, Path::new("fleet.toml")).unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(
            c.targets(Some(&["s2".into()])).unwrap()[0].addr,
            "127.0.0.1:7802"
        );
        let e = c.targets(Some(&["s9".into()])).unwrap_err();
        assert!(e.contains("s1, s2"), "{e}");
        let bad = t.replace("ferry://127.0.0.1:7701/app", "/srv/app");
        let e = FleetConfig::parse(&bad, Path::new("fleet.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("fleet.toml:5:"), "{e}");
    }
}
