//! A server leaving cleanly: drained at the router, its requests in flight
//! finished (bounded), deregistered, and only then the provider's remove
//! command (retried with back-off: the server is out of the pool already, so
//! no later decision would pick it again).

use std::sync::Arc;
use std::time::Duration;

use ferry_config::ScaleSpec;
use ferry_model::ServerState;
use ferry_router::Server;

use super::command;
use super::decide::back_off;
use super::Scaling;
use crate::state::{RuntimeServerError, Shared};

/// How often the requests in flight of a draining server are looked at.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// Runs of the remove command before giving up on it.
const REMOVE_ATTEMPTS: u32 = 4;

pub(super) async fn leave(
    shared: Arc<Shared>,
    scaling: Arc<Scaling>,
    pool: String,
    policy: ScaleSpec,
    server: Arc<Server>,
) {
    let name = server.name.clone();
    let (result, detail) = match leave_steps(&shared, &pool, &policy, &server).await {
        Ok(detail) => ("ok", detail),
        Err((result, detail)) => (result, detail),
    };
    let quiet = scaling.ended(
        &pool,
        &policy,
        "remove",
        Some(name.clone()),
        result,
        detail.clone(),
    );
    if result == "ok" {
        tracing::info!(%pool, action = "remove", server = %name, result, %detail, cooldown_s = quiet.as_secs_f64(), "scale action ended");
    } else {
        tracing::warn!(%pool, action = "remove", server = %name, result, %detail, back_off_s = quiet.as_secs_f64(), "scale action failed");
    }
}

/// The steps; the error is (result label, what happened).
async fn leave_steps(
    shared: &Shared,
    pool: &str,
    policy: &ScaleSpec,
    server: &Server,
) -> Result<String, (&'static str, String)> {
    let name = server.name.as_str();
    match shared.set_server_state(pool, name, ServerState::Drain) {
        Ok(true) => {}
        Ok(false) => return Err(("failed", format!("server {name} left the pool already"))),
        Err(e) => return Err(("failed", format!("cannot drain {name}: {e}"))),
    }
    tracing::info!(%pool, server = %name, "scale: server drained, waiting for its requests in flight");
    let deadline = tokio::time::Instant::now() + policy.drain_timeout;
    while server.active_requests() > 0 {
        if tokio::time::Instant::now() >= deadline {
            // Deregistering it would cut those requests when the remove
            // command stops the server: it serves again, and the next
            // decision (after the back-off) tries again.
            let active = server.active_requests();
            let _ = shared.set_server_state(pool, name, ServerState::Ready);
            return Err((
                "drain_timeout",
                format!(
                    "{active} requests still in flight after {:?}: {name} is ready again",
                    policy.drain_timeout
                ),
            ));
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    match shared.remove_server(pool, name) {
        // Gone already: its agent left by itself (SIGTERM) meanwhile.
        Ok(()) | Err(RuntimeServerError::NoServer(_)) => crate::joined::forget(shared, pool, name),
        Err(e) => {
            let _ = shared.set_server_state(pool, name, ServerState::Ready);
            return Err(("failed", format!("cannot deregister {name}: {e}")));
        }
    }
    tracing::info!(%pool, server = %name, "scale: server deregistered, running the remove command");
    let env = [
        ("FERRY_POOL", pool.to_string()),
        ("FERRY_SERVER", name.to_string()),
        ("FERRY_ADDRESS", server.address.to_string()),
    ];
    let mut attempt = 1;
    loop {
        let run = command::run(&policy.remove_command, &env, policy.command_timeout).await;
        if run.outcome.is_ok() {
            return Ok(format!(
                "drained, deregistered, remove command {} (attempt {attempt})",
                run.outcome
            ));
        }
        let wait = back_off(attempt);
        tracing::warn!(
            %pool, server = %name, attempt, result = run.outcome.label(), detail = %run.outcome,
            stdout = %run.stdout, stderr = %run.stderr,
            retry_in_s = (attempt < REMOVE_ATTEMPTS).then_some(wait.as_secs_f64()),
            "scale: remove command failed"
        );
        if attempt >= REMOVE_ATTEMPTS {
            return Err((
                run.outcome.label(),
                format!(
                    "deregistered, but the remove command failed {attempt} times (last: {})",
                    run.outcome
                ),
            ));
        }
        attempt += 1;
        tokio::time::sleep(wait).await;
    }
}
