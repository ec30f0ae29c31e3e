//! `ferry migrate check` against a real world: two routers (in process),
//! two ferry-sync agents serving the filer's two sides, two MariaDB servers.
//! The check passes and changes nothing (the routers' sites, every file
//! under the world's directory, the journal's absence, both servers'
//! databases and replication connections); then one thing at a time is
//! broken and the check fails with a line naming it.

mod common;
#[path = "../../ferry-db/tests/support/mod.rs"]
mod dbsupport;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{world, World, TOKEN};
use dbsupport::MariaDb;
use ferry_orch::check::{check, CheckOptions, CheckReport, Verdict};
use ferry_orch::RunInputs;
use mysql_async::prelude::Queryable;

const KEY: &str = "check-test-agent-key-0123456789abcdef";

/// A ferry-sync agent serving one volume, on a listener bound before its
/// thread starts (a connection waits in the backlog: no race), stopped on drop.
struct Agent {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(volume: &str, path: &Path, read_only: bool) -> Agent {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let cfg = ferry_sync::AgentConfig {
            listen: addr,
            key: ferry_sync::proto::derive_key(KEY),
            volumes: BTreeMap::from([(
                volume.to_string(),
                ferry_sync::Volume {
                    path: path.to_path_buf(),
                    read_only,
                    watch: false,
                },
            )]),
            limits: ferry_sync::Limits::default(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            ferry_sync::serve(l, Arc::new(cfg), s).unwrap();
        });
        Agent {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct CheckWorld {
    w: World,
    src: MariaDb,
    dst: MariaDb,
    par_agent: Option<Agent>,
    _gra_agent: Agent,
    /// migrate.toml as the world wrote it, with the agents as the filer.
    config: String,
}

async fn check_world() -> CheckWorld {
    let (src, dst) = tokio::join!(MariaDb::start(1), MariaDb::start(2));
    src.exec(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40) NOT NULL); \
         CREATE USER 'shop'@'127.0.0.1' IDENTIFIED BY 'pw'; \
         GRANT ALL ON shop.* TO 'shop'@'127.0.0.1'; \
         INSERT INTO shop.orders (v) VALUES ('one'), ('two')",
    )
    .await;
    let w = world(&format!(
        "[db_servers.sql1]\nsource = \"{}\"\ndestination = \"{}\"\n",
        src.url(),
        dst.url()
    ))
    .await;
    std::fs::create_dir_all(w.path("gra/fs-1")).unwrap();
    let par_agent = Agent::start("fs-1", &w.path("par/fs-1"), true);
    let gra_agent = Agent::start("fs-1", &w.path("gra/fs-1"), false);
    let text = std::fs::read_to_string(&w.config).unwrap();
    let text = text.replace(
        "source = \"par/fs-1\"\ndestination = \"gra/fs-1\"",
        &format!(
            "source = \"ferry://{}/fs-1\"\ndestination = \"ferry://{}/fs-1\"\nkey = \"{KEY}\"",
            par_agent.addr, gra_agent.addr
        ),
    );
    assert!(text.contains("ferry://"), "{text}");
    std::fs::write(&w.config, &text).unwrap();
    // The plan of the runbook tests, with U1's database and its sizes.
    let plan = common::plan_json(true).replacen(
        r#""filers":["fs-1"],"#,
        r#""filers":["fs-1"],"databases":["shop@sql1"],"size":{"file_bytes":23},"freeze":{"total_s":12.5,"final_copy_s":0.5,"final_bytes":1.0,"db_check_s":1.0},"#,
        1,
    );
    std::fs::write(&w.plan, plan).unwrap();
    CheckWorld {
        w,
        src,
        dst,
        par_agent: Some(par_agent),
        _gra_agent: gra_agent,
        config: text,
    }
}

impl CheckWorld {
    async fn check(&self) -> CheckReport {
        let inputs = RunInputs::load(&self.w.config, &self.w.plan, None).unwrap();
        let opts = CheckOptions {
            journal: self.w.journal.clone(),
            timeout: Duration::from_secs(5),
            measure_link: true,
            resume: false,
        };
        let r = check(&inputs, &opts).await;
        for l in &r.lines {
            eprintln!("{l}");
        }
        r
    }

    fn set_config(&self, text: &str) {
        std::fs::write(&self.w.config, text).unwrap();
    }

    /// What the check must leave as it was.
    async fn snapshot(&self) -> Snapshot {
        let mut files = BTreeMap::new();
        tree(self.w.dir.path(), self.w.dir.path(), &mut files);
        Snapshot {
            par: format!("{:?}", self.w.records("par-1").await),
            gra: format!("{:?}", self.w.records("gra-1").await),
            files,
            src: server_state(&self.src).await,
            dst: server_state(&self.dst).await,
        }
    }
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    par: String,
    gra: String,
    /// Every path under the world's directory: its bytes and mtime.
    files: BTreeMap<PathBuf, (Vec<u8>, Option<std::time::SystemTime>)>,
    src: Vec<String>,
    dst: Vec<String>,
}

fn tree(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<PathBuf, (Vec<u8>, Option<std::time::SystemTime>)>,
) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        if md.is_dir() {
            out.insert(rel, (Vec::new(), md.modified().ok()));
            tree(root, &p, out);
        } else {
            out.insert(rel, (std::fs::read(&p).unwrap(), md.modified().ok()));
        }
    }
}

/// The databases, accounts and replication connections of a server.
async fn server_state(db: &MariaDb) -> Vec<String> {
    let mut c = db.conn().await;
    let mut out: Vec<String> = c.query("SHOW DATABASES").await.unwrap();
    let users: Vec<(String, String)> = c
        .query("SELECT user, host FROM mysql.user ORDER BY user, host")
        .await
        .unwrap();
    out.extend(users.into_iter().map(|(u, h)| format!("{u}@{h}")));
    let slaves: Vec<mysql_async::Row> = c.query("SHOW ALL SLAVES STATUS").await.unwrap();
    out.push(format!("{} replication connection(s)", slaves.len()));
    out
}

fn failed_at<'a>(r: &'a CheckReport, what: &str, at: &str) -> Option<&'a ferry_orch::CheckLine> {
    r.lines
        .iter()
        .find(|l| l.verdict == Verdict::Failed && l.what == what && l.at.contains(at))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_passes_changes_nothing_and_names_each_broken_thing() {
    let mut cw = check_world().await;
    let before = cw.snapshot().await;

    let r = cw.check().await;
    assert!(r.ok(), "{:?}", r.failed().collect::<Vec<_>>());
    for what in [
        "plan", "journal", "router", "pool", "sites", "filer", "room", "database", "freeze",
        "link", "timeline",
    ] {
        assert!(r.lines.iter().any(|l| l.what == what), "no {what} line");
    }
    // The destination agent answered the free-space query.
    let room = r
        .lines
        .iter()
        .find(|l| l.what == "room" && l.at == "fs-1 destination")
        .expect("a room line");
    assert_eq!(room.verdict, Verdict::Ok, "{room}");
    assert!(room.why.contains("ferry://"), "{room}");
    assert!(!cw.w.journal.exists());
    assert_eq!(cw.snapshot().await, before, "the check changed something");

    // A wrong token at gra-1.
    let at = cw.config.find("name = \"gra-1\"").unwrap();
    let (head, tail) = cw.config.split_at(at);
    let bad = format!(
        "{head}{}",
        tail.replacen(
            &format!("token = \"{TOKEN}\""),
            "token = \"not-the-router-token\"",
            1
        )
    );
    cw.set_config(&bad);
    let r = cw.check().await;
    let l = failed_at(&r, "router", "gra-1").expect("a failed line for gra-1");
    assert!(l.fix.contains("token"), "{l}");
    assert!(failed_at(&r, "router", "par-1").is_none());
    cw.set_config(&cw.config.clone());

    // par-1's admin API unreachable.
    cw.w.par_admin.set_down(true);
    let r = cw.check().await;
    assert!(failed_at(&r, "router", "par-1").is_some());
    cw.w.par_admin.set_down(false);

    // A wrong agent key.
    cw.set_config(
        &cw.config
            .replace(KEY, "another-key-that-the-agents-do-not-hold"),
    );
    let r = cw.check().await;
    let l = failed_at(&r, "filer", "fs-1 source").expect("a failed line for fs-1's source");
    assert!(l.fix.contains("key"), "{l}");
    assert!(failed_at(&r, "filer", "fs-1 destination").is_some());
    cw.set_config(&cw.config.clone());

    // The source agent down.
    let gone = cw.par_agent.take().unwrap();
    let old = gone.addr;
    drop(gone);
    let r = cw.check().await;
    let l = failed_at(&r, "filer", "fs-1 source").expect("a failed line for fs-1's source");
    assert!(l.fix.contains("start the agent"), "{l}");
    assert!(failed_at(&r, "filer", "fs-1 destination").is_none());
    let back = Agent::start("fs-1", &cw.w.path("par/fs-1"), true);
    cw.config = cw.config.replace(&old.to_string(), &back.addr.to_string());
    cw.par_agent = Some(back);
    cw.set_config(&cw.config.clone());
    assert!(cw.check().await.ok());

    // The database missing at the source.
    cw.src.exec("DROP DATABASE shop").await;
    let r = cw.check().await;
    let l = failed_at(&r, "database", "sql1").expect("a failed line for sql1");
    assert!(l.why.contains("shop"), "{l}");

    // Nothing of all this left a journal or a mover's state file.
    assert!(!cw.w.journal.exists());
    let left: Vec<_> = std::fs::read_dir(cw.w.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("journal"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    drop(cw.dst);
}

/// Local filers (no agents, no database): room at the destination is asked
/// (statvfs) and fails for more bytes than the disk holds; a site already
/// at the destination, or frozen, fails; a journal that exists already
/// fails; a destination directory the run would create is not created by
/// the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_filers_room_and_an_existing_journal() {
    let w = world("").await;
    let plan = common::plan_json(true).replacen(
        r#""filers":["fs-1"],"#,
        r#""filers":["fs-1"],"size":{"file_bytes":23},"#,
        1,
    );
    std::fs::write(&w.plan, &plan).unwrap();
    let opts = CheckOptions {
        journal: w.journal.clone(),
        timeout: Duration::from_secs(5),
        measure_link: false,
        resume: false,
    };
    let inputs = RunInputs::load(&w.config, &w.plan, None).unwrap();
    let r = check(&inputs, &opts).await;
    assert!(r.ok(), "{:?}", r.failed().collect::<Vec<_>>());
    let room = r.lines.iter().find(|l| l.what == "room").unwrap();
    assert_eq!(room.verdict, Verdict::Ok, "{room}");
    assert!(!w.path("gra").exists(), "the check created the destination");

    // More bytes than any disk here holds.
    std::fs::write(
        &w.plan,
        plan.replace("\"file_bytes\":23", "\"file_bytes\":18000000000000000000"),
    )
    .unwrap();
    let inputs = RunInputs::load(&w.config, &w.plan, None).unwrap();
    let r = check(&inputs, &opts).await;
    assert!(failed_at(&r, "room", "fs-1 destination").is_some(), "{r:?}");

    // A site already served from the destination at gra-1: a new run
    // would route it back to the source first.
    let change = |host: &str, placement: &str, state: &str, epoch| ferry_orch::router::SiteChange {
        host: host.into(),
        placement: placement.into(),
        state: state.into(),
        epoch,
    };
    w.client("gra-1")
        .apply(&[change("b.example", "pool:gra-web", "active", 7)])
        .await
        .unwrap();
    let r = check(&inputs, &opts).await;
    let l = failed_at(&r, "sites", "gra-1 U1").expect("a failed sites line at gra-1");
    assert!(l.why.contains("b.example"), "{l}");
    // A site frozen at par-1: another run is in its freeze.
    w.client("par-1")
        .apply(&[change("a.example", "pool:par-web", "frozen", 9)])
        .await
        .unwrap();
    let r = check(&inputs, &opts).await;
    let l = failed_at(&r, "sites", "par-1 U1").expect("a failed sites line at par-1");
    assert!(
        l.why.contains("frozen") && l.why.contains("a.example"),
        "{l}"
    );

    // The destination's pool unknown at gra-1: the flip would be refused.
    let text = std::fs::read_to_string(&w.config).unwrap();
    std::fs::write(
        &w.config,
        text.replace("pool = \"gra-web\"", "pool = \"gra-none\""),
    )
    .unwrap();
    let bad = RunInputs::load(&w.config, &w.plan, None).unwrap();
    let r = check(&bad, &opts).await;
    let l = failed_at(&r, "pool", "gra-1 gra-none").expect("a failed pool line at gra-1");
    assert!(l.why.contains("gra-none"), "{l}");
    std::fs::write(&w.config, text).unwrap();

    // A journal that holds something.
    std::fs::write(&w.journal, b"not empty").unwrap();
    let r = check(&inputs, &opts).await;
    let l = failed_at(&r, "journal", "journal.db").expect("a failed journal line");
    assert!(l.fix.contains("resume"), "{l}");
    assert_eq!(std::fs::read(&w.journal).unwrap(), b"not empty");
}

/// A tmpfs mounted for one test, unmounted (lazily) when dropped. Needs
/// root (the test command runs as root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(at)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs ({opts}) on {} failed: this test needs root",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Room at a destination served by an agent, on a small tmpfs (1 MiB, 16
/// inodes): asked with the free-space query, ok when the units fit, failed
/// naming bytes or inodes when they do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_at_an_agents_destination() {
    let w = world("").await;
    let small = Tmpfs::mount(&w.path("gra/fs-1"), "size=1m,nr_inodes=16,mode=0755");
    let agent = Agent::start("fs-1", &small.0, false);
    let text = std::fs::read_to_string(&w.config).unwrap();
    let text = text.replace(
        "destination = \"gra/fs-1\"",
        &format!(
            "destination = \"ferry://{}/fs-1\"\nkey = \"{KEY}\"",
            agent.addr
        ),
    );
    assert!(text.contains("ferry://"), "{text}");
    std::fs::write(&w.config, &text).unwrap();
    let opts = CheckOptions {
        journal: w.journal.clone(),
        timeout: Duration::from_secs(5),
        measure_link: false,
        resume: false,
    };
    let plan = common::plan_json(true);
    let with_size = |bytes: u64, files: u64| {
        plan.replacen(
            r#""filers":["fs-1"],"#,
            &format!(r#""filers":["fs-1"],"size":{{"file_bytes":{bytes},"files":{files}}},"#),
            1,
        )
    };
    let room_line = |r: &CheckReport| {
        r.lines
            .iter()
            .find(|l| l.what == "room" && l.at == "fs-1 destination")
            .cloned()
            .expect("a room line")
    };

    std::fs::write(&w.plan, with_size(23, 3)).unwrap();
    let inputs = RunInputs::load(&w.config, &w.plan, None).unwrap();
    let r = check(&inputs, &opts).await;
    assert!(r.ok(), "{:?}", r.failed().collect::<Vec<_>>());
    let l = room_line(&r);
    assert_eq!(l.verdict, Verdict::Ok, "{l}");
    assert!(l.why.contains("1048576 bytes free"), "{l}");

    // More bytes than the tmpfs holds.
    std::fs::write(&w.plan, with_size(2 << 20, 3)).unwrap();
    let inputs = RunInputs::load(&w.config, &w.plan, None).unwrap();
    let r = check(&inputs, &opts).await;
    let l = room_line(&r);
    assert_eq!(l.verdict, Verdict::Failed, "{l}");
    assert!(l.why.contains("too few bytes"), "{l}");

    // More files than it has inodes.
    std::fs::write(&w.plan, with_size(23, 100)).unwrap();
    let inputs = RunInputs::load(&w.config, &w.plan, None).unwrap();
    let r = check(&inputs, &opts).await;
    let l = room_line(&r);
    assert_eq!(l.verdict, Verdict::Failed, "{l}");
    assert!(l.why.contains("too few inodes"), "{l}");

    // Nothing written on the destination.
    assert_eq!(std::fs::read_dir(&small.0).unwrap().count(), 0);
    drop(agent);
    drop(small);
}

/// The journal (its database and lock file): length, hash and mtime, to
/// show `--resume` writes nothing there. SQLite's read-only open of a WAL
/// database leaves an empty -wal and a -shm index beside it (as `ferry
/// migrate status` does): those are not compared, the -wal is checked
/// empty.
fn journal_files(w: &World) -> BTreeMap<String, (usize, u64, Option<std::time::SystemTime>)> {
    std::fs::read_dir(w.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with("-wal") {
                assert_eq!(e.metadata().unwrap().len(), 0, "{n}");
            }
            n.starts_with("journal") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .map(|e| {
            let md = e.metadata().unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&bytes, &mut h);
            (
                e.file_name().to_string_lossy().into_owned(),
                (
                    bytes.len(),
                    std::hash::Hasher::finish(&h),
                    md.modified().ok(),
                ),
            )
        })
        .collect()
}

/// `check --resume` before `ferry migrate resume`: a run stopped before
/// its final copy (sites frozen at the epoch the journal says): the
/// journal is opened read-only and verified, the frozen sites are not a
/// failure, nothing is written to the journal. Routers that lost their
/// state (another world's, at the epochs of a fresh start) fail, naming
/// the router, a site and both epochs. Once the run is done the unit is
/// reported done and skipped. Without a journal, `--resume` fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_check_reads_the_journal_and_compares_epochs() {
    use ferry_orch::{Failpoints, KillMode, Options, OrchError, Orchestrator};
    let w = world("").await;
    let opts = CheckOptions {
        journal: w.journal.clone(),
        timeout: Duration::from_secs(5),
        measure_link: false,
        resume: true,
    };
    // No journal: nothing to resume.
    let inputs = RunInputs::load(&w.config, &w.plan, None).unwrap();
    let r = check(&inputs, &opts).await;
    let l = failed_at(&r, "journal", "journal.db").expect("a failed journal line");
    assert!(l.fix.contains("without --resume"), "{l}");
    assert!(!w.journal.exists());

    let fp = Failpoints::parse("final_copy:before=kill", KillMode::Interrupt).unwrap();
    let o = Orchestrator::start(
        w.inputs(),
        &w.journal,
        Options {
            now: true,
            failpoints: Arc::new(fp),
            ..Options::default()
        },
    )
    .unwrap();
    assert!(matches!(o.run().await, Err(OrchError::Interrupted(_))));
    drop(o);
    let before = journal_files(&w);

    let r = check(&inputs, &opts).await;
    for l in &r.lines {
        eprintln!("{l}");
    }
    assert!(r.ok(), "{:?}", r.failed().collect::<Vec<_>>());
    let l = r.lines.iter().find(|l| l.what == "journal").unwrap();
    assert!(
        l.why.contains("chain verified") && l.why.contains("under way: U1"),
        "{l}"
    );
    let sites: Vec<_> = r.lines.iter().filter(|l| l.what == "sites").collect();
    assert_eq!(sites.len(), 2, "{sites:?}");
    assert!(
        sites.iter().all(|l| l.why.contains("journal's epoch")),
        "{sites:?}"
    );
    assert_eq!(journal_files(&w), before, "the check wrote to the journal");

    // Routers that lost what they were sent: another world's, fresh.
    let fresh = world("").await;
    let text = std::fs::read_to_string(&w.config).unwrap();
    let fresh_text = std::fs::read_to_string(&fresh.config).unwrap();
    let admin = |t: &str, i: usize| {
        t.lines()
            .filter(|l| l.starts_with("admin = "))
            .nth(i)
            .unwrap()
            .to_string()
    };
    let lost = text.replace(&admin(&text, 0), &admin(&fresh_text, 0));
    std::fs::write(&w.config, &lost).unwrap();
    let behind = RunInputs::load(&w.config, &w.plan, None).unwrap();
    let r = check(&behind, &opts).await;
    let l = failed_at(&r, "sites", "par-1 U1").expect("a failed sites line at par-1");
    assert!(
        l.why.contains("router par-1 is behind the journal")
            && l.why.contains("epoch 2")
            && l.why.contains("a.example at epoch"),
        "{l}"
    );
    assert!(failed_at(&r, "sites", "gra-1 U1").is_none(), "{r:?}");
    std::fs::write(&w.config, &text).unwrap();
    assert_eq!(journal_files(&w), before, "the check wrote to the journal");

    // The run resumed to its end: U1 is done, skipped.
    let o = Orchestrator::resume(
        &w.journal,
        Options {
            now: true,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(o.run().await.unwrap().ok());
    drop(o);
    let r = check(&inputs, &opts).await;
    assert!(r.ok(), "{:?}", r.failed().collect::<Vec<_>>());
    let l = r
        .lines
        .iter()
        .find(|l| l.what == "unit")
        .expect("a unit line");
    assert!(l.at == "U1" && l.why.contains("done"), "{l}");
    assert!(!r.lines.iter().any(|l| l.what == "sites"), "{r:?}");
    drop(fresh);
}

/// What an agent from before the free-space query sends when it gets that
/// frame: its decoder's refusal (then it hangs up).
const OLD_AGENT_REFUSAL: &str =
    "protocol error: refused frame: protocol error: unknown message type 52";

/// An agent older than the free-space query, for two connections: the
/// destination's side check (the handshake and a scan of no path), then the
/// query, refused as that agent's decoder refused an unknown frame type.
fn old_agent() -> (SocketAddr, std::thread::JoinHandle<()>) {
    use ferry_sync::proto::{self, Msg};
    use std::io::Write;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let key = proto::derive_key(KEY);
    let t = std::thread::spawn(move || {
        for _ in 0..2 {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let send = |m: &Msg| (&s).write_all(&proto::encode(m)).unwrap();
            let nonce = [7u8; 32];
            send(&Msg::Hello { nonce });
            let Some(Ok(Msg::Auth { nonce: cn, .. })) = proto::read_msg(&mut r).unwrap() else {
                panic!("no Auth");
            };
            send(&Msg::AuthOk {
                mac: proto::auth_mac(&key, "server", &cn, &nonce),
            });
            let Some(Ok(Msg::Open { .. })) = proto::read_msg(&mut r).unwrap() else {
                panic!("no Open");
            };
            send(&Msg::Ok);
            match proto::read_msg(&mut r).unwrap() {
                Some(Ok(Msg::ScanPathsReq { .. })) => send(&Msg::ScanEnd {
                    skipped: 0,
                    root: None,
                }),
                Some(Ok(Msg::SpaceReq)) => send(&Msg::Error {
                    message: OLD_AGENT_REFUSAL.into(),
                }),
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    (addr, t)
}

/// An agent too old for the free-space query: the room line is unchecked
/// and says so (the check does not hang or fail on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_at_an_agent_too_old_for_the_query_is_unchecked() {
    let w = world("").await;
    let (addr, old) = old_agent();
    let text = std::fs::read_to_string(&w.config).unwrap();
    let text = text.replace(
        "destination = \"gra/fs-1\"",
        &format!("destination = \"ferry://{addr}/fs-1\"\nkey = \"{KEY}\""),
    );
    std::fs::write(&w.config, &text).unwrap();
    let opts = CheckOptions {
        journal: w.journal.clone(),
        timeout: Duration::from_secs(10),
        measure_link: false,
        resume: false,
    };
    let inputs = RunInputs::load(&w.config, &w.plan, None).unwrap();
    let r = check(&inputs, &opts).await;
    assert!(r.ok(), "{:?}", r.failed().collect::<Vec<_>>());
    let l = r
        .lines
        .iter()
        .find(|l| l.what == "room" && l.at == "fs-1 destination")
        .expect("a room line");
    assert_eq!(l.verdict, Verdict::Unchecked, "{l}");
    assert!(
        l.why.contains("agent too old for a free-space query") && l.fix.contains("upgrade"),
        "{l}"
    );
    old.join().unwrap();
}
