//! Database servers: the mover's preconditions, asked without a state file.

use std::path::{Path, PathBuf};

use super::{CheckReport, Verdict};
use crate::dbmove;
use crate::plan::PlanUnit;
use crate::runbook::RunInputs;

/// Database servers asked at once: each check holds two connections
/// for a moment; a night of thousands of small units must not take hours.
const AT_ONCE: usize = 8;

/// Each unit's database servers: the mover's preconditions on both
/// servers ([`ferry_db::Mover::check`]: reads, writes no state file),
/// [`AT_ONCE`] at a time, the lines in plan order.
pub(super) async fn databases(
    r: &mut CheckReport,
    inputs: &RunInputs,
    units: &[&PlanUnit],
    journal: &Path,
) {
    let journal = std::path::absolute(journal).unwrap_or_else(|_| journal.to_path_buf());
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let mut set = tokio::task::JoinSet::new();
    let mut asked = 0usize;
    for u in units {
        let Ok(groups) = u.databases_by_server() else {
            continue; // RunInputs::load checked the names
        };
        for (server, dbs) in groups {
            let Some(spec) = inputs.cfg.db_servers.get(&server) else {
                continue; // checked by RunInputs::load
            };
            let at = format!("{server} {}", u.id);
            let state_path = dbmove::state_path(&journal, &u.id, &server, false);
            let (i, gate, spec, settings) =
                (asked, gate.clone(), spec.clone(), inputs.cfg.db.clone());
            asked += 1;
            set.spawn(async move {
                let _slot = gate.acquire_owned().await;
                (i, at, one(&spec, &dbs, state_path, &settings).await)
            });
        }
    }
    let mut done = Vec::with_capacity(asked);
    while let Some(j) = set.join_next().await {
        match j {
            Ok(x) => done.push(x),
            Err(e) => r.push(
                "database",
                "?",
                Verdict::Failed,
                format!("a check stopped: {e}"),
                "run the check again",
            ),
        }
    }
    done.sort_by_key(|x| x.0);
    for (_, at, (verdict, why, fix)) in done {
        r.push("database", at, verdict, why, &fix);
    }
}

/// One unit's databases on one server: (verdict, why, fix).
async fn one(
    spec: &crate::config::DbServerSpec,
    dbs: &[String],
    state_path: PathBuf,
    settings: &crate::config::DbSettings,
) -> (Verdict, String, String) {
    if state_path.exists() {
        return (
            Verdict::Failed,
            format!(
                "{} exists: a move of these databases was started",
                state_path.display()
            ),
            "resume that run, or remove the state file if that move was undone".into(),
        );
    }
    match db_check(&spec.source, &spec.destination, dbs, state_path, settings).await {
        Ok(why) => (Verdict::Ok, why, String::new()),
        Err(e) => (Verdict::Failed, e.to_string(), db_fix(&e)),
    }
}

async fn db_check(
    from: &str,
    to: &str,
    dbs: &[String],
    state_path: PathBuf,
    s: &crate::config::DbSettings,
) -> ferry_db::Result<String> {
    let mut cfg = ferry_db::MoverConfig::new(from, to, dbs.to_vec(), state_path)?;
    cfg.workers = s.workers;
    cfg.dest_binlog = s.dest_binlog;
    let mut m = ferry_db::Mover::open(cfg).await?;
    let report = m.check().await?;
    let mut why = format!(
        "{}: preconditions hold ({} bytes, {} account(s))",
        dbs.join(", "),
        report.source_bytes,
        report.accounts.len()
    );
    for w in report.warnings.iter().take(3) {
        why.push_str(&format!("; warning: {w}"));
    }
    Ok(why)
}

fn db_fix(e: &ferry_db::Error) -> String {
    match e {
        ferry_db::Error::DatabaseMissing { .. } => {
            "the database is not at the source: run `ferry plan` on the current inventory".into()
        }
        ferry_db::Error::DatabaseExists { .. } => {
            "drop or rename the destination's copy (or move a unit without it)".into()
        }
        ferry_db::Error::Preconditions { problems } => problems
            .iter()
            .map(|p| p.fix.clone())
            .collect::<Vec<_>>()
            .join("; "),
        _ => "check [db_servers.NAME] source/destination URLs and that both servers are up".into(),
    }
}
