//! `docs/admin-api.yaml` against the code: the same routes (method and
//! path) as [`Route::ALL`], and for each route's request and answer, and
//! each component schema, the same field names as the serde types. A
//! failure names the route (or schema) and the field.

use std::collections::BTreeSet;

use ferry_admin_api::certs::*;
use ferry_admin_api::pools::*;
use ferry_admin_api::router::*;
use ferry_admin_api::sites::*;
use ferry_admin_api::tunnels::*;
use ferry_admin_api::Route;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use yaml_rust2::{Yaml, YamlLoader};

fn doc() -> Yaml {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/admin-api.yaml");
    let text = std::fs::read_to_string(path).expect("reading docs/admin-api.yaml");
    YamlLoader::load_from_str(&text)
        .expect("docs/admin-api.yaml is YAML")
        .remove(0)
}

/// The field names serde reads for `T` (a struct).
fn fields<T: DeserializeOwned>() -> BTreeSet<String> {
    let mut c = Capture(None);
    let _ = T::deserialize(&mut c);
    c.0.unwrap_or_else(|| panic!("{} is not a struct", std::any::type_name::<T>()))
        .iter()
        .map(|f| f.to_string())
        .collect()
}

/// A deserializer that only records the fields a struct asks for.
struct Capture(Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for &mut Capture {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = Some(fields);
        Err(de::Error::custom("captured"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Follows `$ref`s (to schemas and to responses).
fn resolve<'a>(doc: &'a Yaml, y: &'a Yaml) -> &'a Yaml {
    match y["$ref"].as_str() {
        Some(r) => {
            let mut node = doc;
            for part in r.trim_start_matches("#/").split('/') {
                node = &node[part];
            }
            resolve(doc, node)
        }
        None => y,
    }
}

/// The property names of an object schema (`allOf` merged).
fn props(doc: &Yaml, schema: &Yaml) -> BTreeSet<String> {
    let s = resolve(doc, schema);
    let mut out = BTreeSet::new();
    if let Some(parts) = s["allOf"].as_vec() {
        for p in parts {
            out.extend(props(doc, p));
        }
    }
    if let Some(h) = s["properties"].as_hash() {
        out.extend(h.keys().filter_map(|k| k.as_str()).map(str::to_string));
    }
    out
}

/// The JSON schema of a request body or of an answer.
fn json_schema<'a>(doc: &'a Yaml, body: &'a Yaml) -> &'a Yaml {
    &resolve(doc, body)["content"]["application/json"]["schema"]
}

/// Field names in `doc` that serde does not have, and the reverse.
fn compare(
    what: &str,
    doc_fields: BTreeSet<String>,
    code: BTreeSet<String>,
    errs: &mut Vec<String>,
) {
    for f in doc_fields.difference(&code) {
        errs.push(format!(
            "{what}: field {f:?} is in the yaml, not in the code"
        ));
    }
    for f in code.difference(&doc_fields) {
        errs.push(format!(
            "{what}: field {f:?} is in the code, not in the yaml"
        ));
    }
}

#[test]
fn the_yaml_documents_every_route_and_only_those() {
    let doc = doc();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_hash().expect("paths") {
        let path = path.as_str().expect("a path");
        for (method, _) in item.as_hash().expect("methods") {
            let method = method.as_str().expect("a method");
            if method != "parameters" {
                documented.insert((method.to_uppercase(), path.to_string()));
            }
        }
    }
    let coded: BTreeSet<(String, String)> = Route::ALL
        .iter()
        .map(|r| (r.method().to_string(), r.path().to_string()))
        .collect();
    let mut errs = Vec::new();
    for (m, p) in documented.difference(&coded) {
        errs.push(format!("{m} {p}: in the yaml, but no Route"));
    }
    for (m, p) in coded.difference(&documented) {
        errs.push(format!("{m} {p}: a Route, not in the yaml"));
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// A route, its request's fields, its success status and its answer's fields.
type RouteCheck = (
    Route,
    Option<BTreeSet<String>>,
    &'static str,
    Option<BTreeSet<String>>,
);

#[test]
fn request_and_answer_fields_match_the_types() {
    let doc = doc();
    let mut errs = Vec::new();
    let routes: Vec<RouteCheck> = vec![
        (Route::Healthz, None, "200", Some(fields::<Health>())),
        (Route::Metrics, None, "200", None),
        (Route::Status, None, "200", Some(fields::<Status>())),
        (Route::ListSites, None, "200", Some(fields::<SitePage>())),
        (
            Route::ApplySites,
            Some(fields::<SiteBatch>()),
            "200",
            Some(fields::<Applied>()),
        ),
        (
            Route::QuerySites,
            Some(fields::<HostList>()),
            "200",
            Some(fields::<QueryAnswer>()),
        ),
        (
            Route::RemoveSites,
            Some(fields::<HostList>()),
            "200",
            Some(fields::<Removed>()),
        ),
        (Route::GetSite, None, "200", Some(fields::<Site>())),
        (
            Route::PutSite,
            Some(fields::<SiteChange>()),
            "200",
            Some(fields::<Applied>()),
        ),
        (Route::DeleteSite, None, "200", Some(fields::<Removed>())),
        (Route::ListPools, None, "200", Some(fields::<PoolList>())),
        (
            Route::SetServer,
            Some(fields::<SetServerState>()),
            "200",
            Some(fields::<ServerStateSet>()),
        ),
        (
            Route::RemoveServer,
            None,
            "200",
            Some(fields::<ServerLeft>()),
        ),
        (
            Route::AddServer,
            Some(fields::<NewServer>()),
            "201",
            Some(fields::<ServerJoined>()),
        ),
        (Route::ListCerts, None, "200", Some(fields::<CertList>())),
        (
            Route::PutCert,
            Some(fields::<CertPair>()),
            "200",
            Some(fields::<CertStored>()),
        ),
        (
            Route::DeleteCert,
            None,
            "200",
            Some(fields::<CertRemoved>()),
        ),
        (
            Route::ListTunnels,
            None,
            "200",
            Some(fields::<TunnelList>()),
        ),
        (Route::GetTunnel, None, "200", Some(fields::<Tunnel>())),
        (
            Route::RepointTunnel,
            Some(fields::<Repoint>()),
            "200",
            Some(fields::<Tunnel>()),
        ),
        (Route::TunnelUses, None, "200", Some(fields::<TunnelUses>())),
        (Route::ExportUses, None, "200", Some(fields::<UsesExport>())),
        (Route::Reload, None, "200", Some(fields::<Reloaded>())),
    ];
    assert_eq!(routes.len(), Route::ALL.len(), "every route is checked");
    for (route, request, status, answer) in routes {
        let op = &doc["paths"][route.path()][route.method().to_lowercase().as_str()];
        let name = format!("{} {}", route.method(), route.path());
        let doc_request = &op["requestBody"];
        match (request, doc_request.is_badvalue()) {
            (Some(code), false) => compare(
                &format!("{name} request"),
                props(&doc, json_schema(&doc, doc_request)),
                code,
                &mut errs,
            ),
            (None, true) => {}
            (Some(_), true) => errs.push(format!("{name}: the yaml has no request body")),
            (None, false) => errs.push(format!(
                "{name}: the yaml has a request body, the code none"
            )),
        }
        let doc_answer = &op["responses"][status];
        if doc_answer.is_badvalue() {
            errs.push(format!("{name}: the yaml has no {status} answer"));
            continue;
        }
        if let Some(code) = answer {
            compare(
                &format!("{name} answer {status}"),
                props(&doc, json_schema(&doc, doc_answer)),
                code,
                &mut errs,
            );
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[test]
fn nested_and_component_schemas_match_the_types() {
    let doc = doc();
    let schemas = &doc["components"]["schemas"];
    let mut errs = Vec::new();
    let components = [
        ("SiteRecord", fields::<SiteRecord>()),
        ("Site", fields::<Site>()),
        ("AbsentSite", fields::<AbsentSite>()),
        ("SiteChange", fields::<SiteChange>()),
        ("BatchSiteChange", fields::<SiteChange>()),
        ("SiteBatch", fields::<SiteBatch>()),
        ("HostList", fields::<HostList>()),
        ("Outcome", fields::<Applied>()),
        ("StaleSite", fields::<StaleSite>()),
        ("Conflict", fields::<Conflict>()),
        ("Server", fields::<Server>()),
        ("Pool", fields::<Pool>()),
        ("Tunnel", fields::<Tunnel>()),
        ("Certificate", fields::<Certificate>()),
        ("Status", fields::<Status>()),
        ("ReloadReport", fields::<ReloadReport>()),
        ("Error", fields::<ErrorBody>()),
    ];
    for (name, code) in components {
        let s = &schemas[name];
        if s.is_badvalue() {
            errs.push(format!("schema {name}: not in the yaml"));
            continue;
        }
        compare(&format!("schema {name}"), props(&doc, s), code, &mut errs);
    }
    // Objects described inline inside another.
    let answer = |r: Route, status: &str| {
        let op = &doc["paths"][r.path()][r.method().to_lowercase().as_str()];
        json_schema(&doc, &op["responses"][status]).clone()
    };
    let uses = answer(Route::TunnelUses, "200");
    compare(
        "GET /v1/tunnels/{tunnel}/uses answer: uses[]",
        props(&doc, &uses["properties"]["uses"]["items"]),
        fields::<TunnelUse>(),
        &mut errs,
    );
    let export = answer(Route::ExportUses, "200");
    compare(
        "POST /v1/tunnels/uses/export answer: uses[]",
        props(&doc, &export["properties"]["uses"]["items"]),
        fields::<ObservedUse>(),
        &mut errs,
    );
    let galera = &schemas["Tunnel"]["properties"]["galera"];
    compare(
        "schema Tunnel: galera",
        props(&doc, galera),
        fields::<Galera>(),
        &mut errs,
    );
    compare(
        "schema Tunnel: galera.nodes[]",
        props(&doc, &galera["properties"]["nodes"]["items"]),
        fields::<GaleraNode>(),
        &mut errs,
    );
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}
