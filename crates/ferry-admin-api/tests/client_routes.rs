//! Every route has a client method: each method is called against a
//! loopback listener that records the request line (and answers 500), and
//! the recorded calls must resolve to every [`Route`], each once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use ferry_admin_api::certs::CertPair;
use ferry_admin_api::pools::{NewServer, ServerState};
use ferry_admin_api::sites::{SiteBatch, SiteChange, SiteListQuery};
use ferry_admin_api::{AdminClient, AdminError, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Records "METHOD PATH" of each request, with its Authorization header.
async fn recorder() -> (String, Arc<Mutex<Vec<(String, String, String)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let mut words = text.split_whitespace();
                let method = words.next().unwrap_or("").to_string();
                let target = words.next().unwrap_or("").to_string();
                let auth = text
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .unwrap_or("")
                    .to_string();
                log.lock().unwrap().push((method, target, auth));
                let body = br#"{"error": "recorded"}"#;
                let answer = format!(
                    "HTTP/1.1 418 I'm a teapot\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.write_all(body).await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn every_route_has_a_client_method() {
    let (base, seen) = recorder().await;
    let api = AdminClient::new("r1", &base, Some("t0ken"));
    let hosts = vec!["a.com".to_string()];
    let change = SiteChange {
        host: None,
        placement: "pool:web".into(),
        state: Default::default(),
        epoch: 1,
    };
    let pair = CertPair {
        chain: String::new(),
        key: String::new(),
    };
    let server = NewServer {
        name: "s1".into(),
        address: "127.0.0.1:1".parse().unwrap(),
        tier: 0,
        weight: 1,
        state: ServerState::Ready,
    };
    let results: Vec<Result<(), AdminError>> = vec![
        api.healthz().await.map(drop),
        api.metrics().await.map(drop),
        api.status().await.map(drop),
        api.list_sites(&SiteListQuery::default()).await.map(drop),
        api.apply(&SiteBatch { sites: vec![] }).await.map(drop),
        api.query(&hosts).await.map(drop),
        api.remove_sites(&hosts).await.map(drop),
        api.get_site("*.a.com").await.map(drop),
        api.put_site("a.com", &change).await.map(drop),
        api.delete_site("a.com").await.map(drop),
        api.pools().await.map(drop),
        api.set_server("web", "s1", ServerState::Drain)
            .await
            .map(drop),
        api.remove_server("web", "s1").await.map(drop),
        api.add_server("web", &server).await.map(drop),
        api.certs().await.map(drop),
        api.put_cert("shop", &pair).await.map(drop),
        api.delete_cert("shop").await.map(drop),
        api.tunnels().await.map(drop),
        api.tunnel("db").await.map(drop),
        api.repoint_tunnel("db", "127.0.0.1:3306").await.map(drop),
        api.tunnel_uses("db").await.map(drop),
        api.export_uses().await.map(drop),
        api.reload().await.map(drop),
    ];
    for r in &results {
        let e = r.as_ref().expect_err("the recorder answers 418");
        assert_eq!(e.status(), Some(418), "{e}");
        assert!(e.is_refused());
        let text = e.to_string();
        assert!(text.starts_with("router r1: "), "names the router: {text}");
        assert!(text.ends_with("answered 418: recorded"), "{text}");
    }
    let seen = seen.lock().unwrap().clone();
    let mut routes = BTreeSet::new();
    for (method, target, auth) in &seen {
        assert_eq!(auth, "Bearer t0ken", "{method} {target}");
        let path = target.split('?').next().unwrap_or("");
        let (route, _) =
            Route::resolve(method, path).unwrap_or_else(|| panic!("{method} {target} is no route"));
        assert!(
            routes.insert(format!("{route:?}")),
            "{route:?} called twice"
        );
    }
    let all: BTreeSet<String> = Route::ALL.iter().map(|r| format!("{r:?}")).collect();
    assert_eq!(routes, all);
    assert!(
        seen.iter().any(|(_, t, _)| t == "/v1/sites/%2A.a.com"),
        "hosts are encoded"
    );
}

#[tokio::test]
async fn an_unreachable_router_is_a_transport_error_naming_it() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = AdminClient::new("dc9", &format!("http://127.0.0.1:{port}"), None);
    let e = api.status().await.expect_err("nobody listens");
    assert!(matches!(e, AdminError::Transport { .. }), "{e:?}");
    assert!(!e.is_refused());
    assert!(
        e.to_string().starts_with("router dc9: GET /v1/status: "),
        "{e}"
    );
}

#[tokio::test]
async fn a_large_answer_is_refused_not_read_whole() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let body = vec![b' '; 10_000];
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&body).await;
    });
    let api = AdminClient::new("big", &format!("http://{addr}"), None).with_max_answer(1000);
    let e = api.status().await.expect_err("too large");
    assert!(
        matches!(e, AdminError::TooLarge { limit: 1000, .. }),
        "{e:?}"
    );
}
