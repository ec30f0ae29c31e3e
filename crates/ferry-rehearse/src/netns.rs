//! Linux network namespaces for tests and rehearsals: a [`Namespace`] (its
//! own interfaces, addresses and ports; deleted when dropped), a [`Link`]
//! between two of them (a veth pair) shaped by [`Netem`] (latency, rate,
//! loss: `tc netem`), and three ways to run something inside one: a child
//! process ([`Namespace::command`]), a closure on a thread
//! ([`Namespace::run`]) and a tokio runtime whose every thread lives there
//! ([`Namespace::runtime`]): sockets and children are created in the
//! namespace of the thread that creates them.
//!
//! Names are `<prefix>-<pid>-<role>`, so a namespace left behind by a run
//! that died (kill -9) is recognised by its dead pid and removed by
//! [`remove_stale`]. Everything here needs root (CAP_SYS_ADMIN and
//! CAP_NET_ADMIN); the `ip` and `tc` commands of iproute2 do the work.
//!
//! A later use: partition tests of the control plane (a link whose loss goes
//! to 100 % and back, [`Link::shape`]).

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// What went wrong, with the command or path involved.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)")]
    NotRoot,
    #[error("running `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("opening namespace {name}: {source}")]
    Open {
        name: String,
        source: std::io::Error,
    },
    #[error("entering namespace {name}: {source}")]
    Enter {
        name: String,
        source: std::io::Error,
    },
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

/// True when this process runs as root (namespaces need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a command that must succeed; its stderr goes into the error.
fn run(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace this process created; dropping it kills what still
/// runs inside and deletes it.
#[derive(Debug)]
pub struct Namespace {
    name: String,
    fd: Arc<OwnedFd>,
}

impl Namespace {
    /// `ip netns add <prefix>-<pid>-<role>` with its loopback up.
    pub fn create(prefix: &str, role: &str) -> Result<Namespace, NetnsError> {
        if !is_root() {
            return Err(NetnsError::NotRoot);
        }
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 24
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !ok(prefix) || !ok(role) {
            return Err(NetnsError::Invalid {
                what: "namespace name",
                detail: format!("{prefix:?}/{role:?}: letters, digits and _ only, 1-24 each"),
            });
        }
        let name = format!("{prefix}-{}-{role}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        // From here on, an error deletes the namespace again (Drop).
        let fd = match std::fs::File::open(format!("/run/netns/{name}")) {
            Ok(f) => Arc::new(OwnedFd::from(f)),
            Err(source) => {
                let _ = run("ip", &["netns", "del", &name]);
                return Err(NetnsError::Open { name, source });
            }
        };
        let ns = Namespace { name, fd };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`,
    /// which execs it: the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Moves the calling thread into the namespace, for good: only for
    /// threads made for it.
    pub fn enter_current_thread(&self) -> Result<(), NetnsError> {
        rustix::thread::move_into_link_name_space(
            self.fd.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| NetnsError::Enter {
            name: self.name.clone(),
            source: e.into(),
        })
    }

    /// Runs `f` on a new thread inside the namespace and returns its result
    /// (sockets it opens and children it spawns live there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter_current_thread()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A multi-thread tokio runtime whose every thread (workers and the
    /// blocking pool) lives in the namespace. Use `spawn` on it, not
    /// `block_on` (that runs on the calling thread). A thread that cannot
    /// enter the namespace aborts the process: its sockets would otherwise
    /// reach the host's network.
    pub fn runtime(&self, workers: usize) -> Result<tokio::runtime::Runtime, NetnsError> {
        let (fd, name) = (Arc::clone(&self.fd), self.name.clone());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(format!("ns-{}", self.name))
            .enable_all()
            .on_thread_start(move || {
                let entered = rustix::thread::move_into_link_name_space(
                    fd.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                );
                if let Err(e) = entered {
                    eprintln!("fatal: a thread could not enter namespace {name}: {e}");
                    std::process::abort();
                }
            })
            .build()
            .map_err(|e| NetnsError::Enter {
                name: self.name.clone(),
                source: e,
            })
    }
}

/// Kills what runs inside a namespace (SIGKILL), then deletes it.
fn destroy(name: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    let _ = run("ip", &["netns", "del", name]);
}

impl Drop for Namespace {
    fn drop(&mut self) {
        destroy(&self.name);
    }
}

/// Names of this machine's namespaces that start with `<prefix>-`.
pub fn list(prefix: &str) -> Result<Vec<String>, NetnsError> {
    let out = run("ip", &["netns", "list"])?;
    let start = format!("{prefix}-");
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&start))
        .map(str::to_string)
        .collect())
}

/// Removes `<prefix>-<pid>-*` namespaces whose pid no longer runs (a run
/// killed before its guards could clean up); returns their names.
pub fn remove_stale(prefix: &str) -> Result<Vec<String>, NetnsError> {
    let mut removed = Vec::new();
    for name in list(prefix)? {
        let pid = name[prefix.len() + 1..]
            .split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            destroy(&name);
            removed.push(name);
        }
    }
    Ok(removed)
}

/// How a link misbehaves, per direction (`tc qdisc ... netem`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Netem {
    /// Added to every packet, each way.
    pub delay: Duration,
    /// Bits per second, each way; None: unlimited.
    pub rate_bits: Option<u64>,
    /// Packets dropped, in percent (100: a partition).
    pub loss_percent: f64,
}

impl Netem {
    fn args(&self) -> Result<Vec<String>, NetnsError> {
        if !(0.0..=100.0).contains(&self.loss_percent) {
            return Err(NetnsError::Invalid {
                what: "netem loss",
                detail: format!("{} % is not within 0-100", self.loss_percent),
            });
        }
        let mut a = vec!["delay".to_string(), format!("{}us", self.delay.as_micros())];
        if let Some(rate) = self.rate_bits {
            if rate == 0 {
                return Err(NetnsError::Invalid {
                    what: "netem rate",
                    detail: "0 bit/s: use loss 100 for a partition".into(),
                });
            }
            a.push("rate".into());
            a.push(format!("{rate}bit"));
            // The default queue (1000 packets) drops at high rates with delay.
            a.push("limit".into());
            a.push("100000".into());
        }
        if self.loss_percent > 0.0 {
            a.push("loss".into());
            a.push(format!("{}%", self.loss_percent));
        }
        Ok(a)
    }
}

/// One end of a [`Link`]: the namespace, the device's name there, its address.
pub struct End<'a> {
    pub ns: &'a Namespace,
    pub dev: &'a str,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// A veth pair between two namespaces; it disappears with them.
#[derive(Debug)]
pub struct Link {
    ends: [(String, String); 2],
}

impl Link {
    /// Creates the pair directly in both namespaces, addresses it and sets it up.
    pub fn veth(a: End<'_>, b: End<'_>) -> Result<Link, NetnsError> {
        for e in [&a, &b] {
            if e.dev.is_empty() || e.dev.len() > 15 || e.prefix_len > 32 {
                return Err(NetnsError::Invalid {
                    what: "link end",
                    detail: format!("device {:?} (1-15 bytes), /{}", e.dev, e.prefix_len),
                });
            }
        }
        run(
            "ip",
            &[
                "link",
                "add",
                a.dev,
                "netns",
                a.ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                b.dev,
                "netns",
                b.ns.name(),
            ],
        )?;
        for e in [&a, &b] {
            let cidr = format!("{}/{}", e.addr, e.prefix_len);
            e.ns.ip(&["addr", "add", &cidr, "dev", e.dev])?;
            e.ns.ip(&["link", "set", e.dev, "up"])?;
        }
        Ok(Link {
            ends: [
                (a.ns.name().to_string(), a.dev.to_string()),
                (b.ns.name().to_string(), b.dev.to_string()),
            ],
        })
    }

    /// Sets (or replaces) the qdisc on both ends: each direction gets
    /// `netem`'s delay, rate and loss. A kernel built without netem
    /// (CONFIG_NET_SCH_NETEM) still gets the rate, through tbf; the answer
    /// says what applies, so the caller can say what it measured.
    pub fn shape(&self, netem: &Netem) -> Result<Applied, NetnsError> {
        let args = netem.args()?;
        match self.qdisc("netem", &args) {
            Ok(()) => Ok(Applied {
                qdisc: "netem",
                delay: netem.delay,
                rate_bits: netem.rate_bits,
                loss_percent: netem.loss_percent,
            }),
            Err(NetnsError::Command { stderr, .. }) if stderr.contains("qdisc kind is unknown") => {
                let Some(rate) = netem.rate_bits else {
                    return Ok(Applied::default());
                };
                // 10 ms of traffic per burst (at least 64 KiB), so the
                // timer's granularity does not cap the rate.
                let burst = (rate / 8 / 100).max(64 * 1024);
                let tbf = [
                    "rate".to_string(),
                    format!("{rate}bit"),
                    "burst".into(),
                    burst.to_string(),
                    "latency".into(),
                    "200ms".into(),
                ];
                self.qdisc("tbf", &tbf)?;
                Ok(Applied {
                    qdisc: "tbf",
                    delay: Duration::ZERO,
                    rate_bits: Some(rate),
                    loss_percent: 0.0,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Takes both ends down (`up` false: a cut cable, packets in flight
    /// and those sent after are dropped without a word to either side) or
    /// up again; addresses and qdiscs stay.
    pub fn set_up(&self, up: bool) -> Result<(), NetnsError> {
        let state = if up { "up" } else { "down" };
        for (ns, dev) in &self.ends {
            run("ip", &["-n", ns, "link", "set", "dev", dev, state])?;
        }
        Ok(())
    }

    fn qdisc(&self, kind: &str, args: &[String]) -> Result<(), NetnsError> {
        for (ns, dev) in &self.ends {
            let mut all = vec![
                "-n",
                ns.as_str(),
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                kind,
            ];
            all.extend(args.iter().map(String::as_str));
            run("tc", &all)?;
        }
        Ok(())
    }
}

/// What [`Link::shape`] could apply (each way).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// "netem", "tbf" (rate only: the kernel has no netem) or "" (nothing).
    pub qdisc: &'static str,
    pub delay: Duration,
    pub rate_bits: Option<u64>,
    pub loss_percent: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netem_arguments() {
        let n = Netem {
            delay: Duration::from_millis(5),
            rate_bits: Some(1_000_000_000),
            loss_percent: 0.0,
        };
        assert_eq!(
            n.args().unwrap().join(" "),
            "delay 5000us rate 1000000000bit limit 100000"
        );
        let bad = Netem {
            loss_percent: 101.0,
            ..Netem::default()
        };
        assert!(bad.args().is_err());
        let zero = Netem {
            rate_bits: Some(0),
            ..Netem::default()
        };
        assert!(zero.args().is_err());
    }
}
