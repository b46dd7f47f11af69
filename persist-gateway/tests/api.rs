//! The REST API over real HTTP, on a real gateway pair (config files, the
//! sample modules and a small module of this test with a secret field and
//! a restricting reference): every record type round-trips, every error
//! case answers with its typed JSON, a write on the backup names the
//! master, a stale ETag is refused, token roles hold, writes are audited,
//! and the OpenAPI document passes `openapi-spec-validator`.

mod api_support;

use std::path::Path;
use std::time::{Duration, Instant};

use api_support::*;
use serde_json::{json, Value as Json};

/// One HTTP answer.
struct Answer {
    status: u16,
    etag: Option<String>,
    location: Option<String>,
    body: Json,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

impl Answer {
    fn kind(&self) -> &str {
        self.body["error"]["kind"].as_str().unwrap_or("")
    }
}

struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(base: &str) -> Client {
        Client {
            base: base.to_owned(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(20)))
                .build()
                .into(),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        if_match: Option<&str>,
        body: Option<Json>,
    ) -> Answer {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(m) = if_match {
            req = req.header("If-Match", m);
        }
        // A JSON string is sent as it is, so a test can send what is not JSON.
        let body = body.map(|b| match b {
            Json::String(raw) => raw,
            other => other.to_string(),
        });
        let mut resp = match body {
            Some(b) => self
                .agent
                .run(
                    req.header("Content-Type", "application/json")
                        .body(b)
                        .unwrap(),
                )
                .unwrap(),
            None => self.agent.run(req.body(()).unwrap()).unwrap(),
        };
        let header = |h: &str| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (etag, location) = (header("etag"), header("location"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        let body = if text.is_empty() {
            Json::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Json::String(text))
        };
        Answer {
            status,
            etag,
            location,
            body,
        }
    }

    fn get(&self, path: &str) -> Answer {
        self.call("GET", path, Some(READ), None, None)
    }
    fn post(&self, path: &str, body: Json) -> Answer {
        self.call("POST", path, Some(WRITE), None, Some(body))
    }
    fn put(&self, path: &str, etag: &str, body: Json) -> Answer {
        self.call("PUT", path, Some(WRITE), Some(etag), Some(body))
    }
    fn delete(&self, path: &str, etag: &str) -> Answer {
        self.call("DELETE", path, Some(WRITE), Some(etag), None)
    }
}

fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_on_a_gateway_pair() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (a, b) = pair(&d).await;
    let master_url = format!("http://{}", a.status_addr());
    let backup_url = format!("http://{}", b.status_addr());
    let (ms, bs) = (a.store().clone(), b.store().clone());
    let dir2 = d.clone();
    tokio::task::spawn_blocking(move || {
        let m = Client::new(&master_url);
        let bk = Client::new(&backup_url);
        tokens(&m);
        until("the master takes writes", || {
            m.post("/api/v1/records/site", json!({"name": "probe"}))
                .status
                == 201
        });
        round_trips(&m);
        errors(&m);
        concurrency(&m);
        events(&m, &bk);
        secrets(&m, &ms);
        until("the backup has every row", || {
            bs.position() == ms.position() && bs.digest() == ms.digest()
        });
        backup(&m, &bk, &master_url);
        audit(&m);
        openapi(&m, &dir2);
    })
    .await
    .unwrap();
    b.shutdown().await;
    a.shutdown().await;
}

fn tokens(m: &Client) {
    let path = "/api/v1/records/notification_profile";
    let none = m.call("GET", path, None, None, None);
    assert_eq!(
        (none.status, none.kind()),
        (401, "unauthorized"),
        "{none:?}"
    );
    for wrong in [OPERATOR, "not a token of this node at all", ""] {
        let r = m.call("GET", path, Some(wrong), None, None);
        assert_eq!(
            (r.status, r.kind()),
            (401, "unauthorized"),
            "{wrong}: {r:?}"
        );
    }
    let r = m.call("GET", path, Some(READ), None, None);
    assert_eq!(r.status, 200, "{r:?}");
    let r = m.call("POST", path, Some(READ), None, Some(json!({"name": "x"})));
    assert_eq!((r.status, r.kind()), (403, "forbidden"), "{r:?}");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`scada` may only read"));
    // The operator token is not an API token, even for a write.
    let r = m.call(
        "POST",
        path,
        Some(OPERATOR),
        None,
        Some(json!({"name": "x"})),
    );
    assert_eq!(r.status, 401, "{r:?}");
    // The OpenAPI document needs a token too.
    assert_eq!(m.call("GET", "/openapi.json", None, None, None).status, 401);
    // The operator surface is still there, beside the API.
    assert_eq!(m.call("GET", "/state", None, None, None).status, 200);
}

fn round_trips(m: &Client) {
    let types = m.get("/api/v1/records");
    let names: Vec<&str> = types.body["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    for t in [
        "device",
        "journal_entry",
        "notification_profile",
        "panel_operator",
        "production_counter",
        "site",
        "tag",
    ] {
        assert!(names.contains(&t), "{t} in {names:?}");
    }
    // notification_profile: a default fills `enabled`.
    let p = m.post(
        "/api/v1/records/notification_profile",
        json!({"name": "night shift"}),
    );
    assert_eq!(p.status, 201, "{p:?}");
    assert_eq!(p.body["enabled"], true);
    let pid = p.body["id"].as_i64().unwrap();
    assert_eq!(
        p.location.as_deref(),
        Some(format!("/api/v1/records/notification_profile/{pid}").as_str())
    );
    let got = m.get(&format!("/api/v1/records/notification_profile/{pid}"));
    assert_eq!((got.status, &got.body), (200, &p.body));
    assert_eq!(
        got.etag, p.etag,
        "the ETag of a read is the one of the write"
    );
    // device: an enum by its stored name, a float, a reference.
    let dev = json!({
        "name": "press-1", "host": "10.0.0.7", "port": 502, "protocol": "opc-ua",
        "profile_id": pid, "alarm_above": 80.5
    });
    let d = m.post("/api/v1/records/device", dev.clone());
    assert_eq!(d.status, 201, "{d:?}");
    let did = d.body["id"].as_i64().unwrap();
    let mut expected = dev.clone();
    expected["id"] = json!(did);
    assert_eq!(d.body, expected);
    let d2 = m.post(
        "/api/v1/records/device",
        json!({"name": "press-2", "host": "10.0.0.8", "protocol": "ModbusTcp",
               "profile_id": pid, "alarm_above": "Infinity"}),
    );
    assert_eq!(d2.status, 201, "{d2:?}");
    assert_eq!(d2.body["port"], 502, "the default port");
    assert_eq!(d2.body["alarm_above"], "Infinity");
    // tag, with its default scale.
    let t = m.post(
        "/api/v1/records/tag",
        json!({"device_id": did, "address": "40001"}),
    );
    assert_eq!(t.status, 201, "{t:?}");
    assert_eq!(t.body["scale"], 1.0);
    // journal_entry and production_counter.
    let j = m.post(
        "/api/v1/records/journal_entry",
        json!({"origin": "gw-a", "seq": 1, "text": "line one\nline two"}),
    );
    assert_eq!(j.status, 201, "{j:?}");
    assert_eq!(j.body["text"], "line one\nline two");
    let c = m.post(
        "/api/v1/records/production_counter",
        json!({"name": "line-1", "value": 5}),
    );
    assert_eq!(c.status, 201, "{c:?}");
    // Every type reads back what was written, by key and in its list.
    for (ty, rec) in [
        ("device", &d.body),
        ("tag", &t.body),
        ("journal_entry", &j.body),
        ("production_counter", &c.body),
    ] {
        let key = rec["id"].as_i64().unwrap();
        let one = m.get(&format!("/api/v1/records/{ty}/{key}"));
        assert_eq!((one.status, &one.body), (200, rec), "{ty}");
        let list = m.get(&format!("/api/v1/records/{ty}?id={key}"));
        assert_eq!(list.body["items"][0], *rec, "{ty}: {list:?}");
        assert_eq!(
            format!("\"{}\"", list.body["versions"][0].as_str().unwrap()),
            one.etag.unwrap(),
            "{ty}: a list gives each row's ETag"
        );
    }
    // Filters, order, paging.
    let l = m.get("/api/v1/records/device?port=502&order=-name&limit=1");
    assert_eq!(l.body["total"], 2, "{l:?}");
    assert_eq!(l.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(l.body["items"][0]["name"], "press-2");
    let l = m.get("/api/v1/records/device?order=-name&limit=1&offset=1");
    assert_eq!(l.body["items"][0]["name"], "press-1");
    let l = m.get("/api/v1/records/device?protocol=opc-ua");
    assert_eq!(l.body["total"], 1, "{l:?}");
    let l = m.get("/api/v1/records/device?alarm_above.gt=100&alarm_above.le=Infinity");
    assert_eq!(l.body["items"][0]["name"], "press-2", "{l:?}");
    let l = m.get("/api/v1/records/device?name.ne=press-1&name.ge=press-0");
    assert_eq!(l.body["total"], 1, "{l:?}");
    let l = m.get("/api/v1/records/panel_operator?notes.null=true");
    assert_eq!((l.status, &l.body["total"]), (200, &json!(0)), "{l:?}");
    // Replace, then delete with the cascade.
    let mut changed = d.body.clone();
    changed["port"] = json!(1502);
    let r = m.put(
        &format!("/api/v1/records/device/{did}"),
        d.etag.as_deref().unwrap(),
        changed.clone(),
    );
    assert_eq!((r.status, &r.body), (200, &changed), "{r:?}");
    assert_ne!(r.etag, d.etag, "a change gives another version");
    let del = m.delete(
        &format!("/api/v1/records/device/{did}"),
        r.etag.as_deref().unwrap(),
    );
    assert_eq!(del.status, 204, "{del:?}");
    let tid = t.body["id"].as_i64().unwrap();
    assert_eq!(m.get(&format!("/api/v1/records/tag/{tid}")).status, 404);
    assert_eq!(m.get(&format!("/api/v1/records/device/{did}")).status, 404);
}

fn errors(m: &Client) {
    let p = m.post(
        "/api/v1/records/notification_profile",
        json!({"name": "errors"}),
    );
    let pid = p.body["id"].as_i64().unwrap();
    // Unique violation, naming the column and the field.
    let r = m.post(
        "/api/v1/records/notification_profile",
        json!({"name": "errors"}),
    );
    assert_eq!((r.status, r.kind()), (409, "unique_violation"), "{r:?}");
    assert_eq!(r.body["error"]["column"], "name");
    assert_eq!(r.body["error"]["field"], "name");
    assert_eq!(r.body["error"]["table"], "notification_profile");
    // The validator's message.
    let dev = |port: i64, profile: i64| {
        json!({"name": format!("d{port}"), "host": "h", "port": port, "protocol": "ModbusTcp",
               "profile_id": profile, "alarm_above": 1.0})
    };
    let r = m.post("/api/v1/records/device", dev(0, pid));
    assert_eq!((r.status, r.kind()), (422, "validation"), "{r:?}");
    assert_eq!(r.body["error"]["message"], "port 0 is not a TCP port");
    // A bound of the metadata, checked before the validator.
    let r = m.post(
        "/api/v1/records/production_counter",
        json!({"name": "line-9", "value": -1}),
    );
    assert_eq!((r.status, r.kind()), (422, "validation"), "{r:?}");
    assert_eq!(
        r.body["error"]["message"],
        "Pieces must be at least 0, not -1"
    );
    // A missing reference.
    let r = m.post("/api/v1/records/device", dev(503, 999_999));
    assert_eq!((r.status, r.kind()), (422, "missing_reference"), "{r:?}");
    assert_eq!(r.body["error"]["field"], "profile_id");
    assert_eq!(r.body["error"]["target"], "notification_profile");
    assert_eq!(r.body["error"]["key"], "999999");
    // A restricting reference.
    let site = m.post("/api/v1/records/site", json!({"name": "north"}));
    let sid = site.body["id"].as_i64().unwrap();
    let op = m.post(
        "/api/v1/records/panel_operator",
        json!({"login": "ann", "password": "pw of ann", "site_id": sid}),
    );
    assert_eq!(op.status, 201, "{op:?}");
    let preview = m.get(&format!("/api/v1/records/site/{sid}/delete-preview"));
    assert_eq!(
        preview.body,
        json!({"cascade": [], "restrict": [{"type": "panel_operator", "count": 1}]}),
        "{preview:?}"
    );
    let preview = m.get(&format!(
        "/api/v1/records/notification_profile/{pid}/delete-preview"
    ));
    assert_eq!(preview.body, json!({"cascade": [], "restrict": []}));
    let r = m.delete(&format!("/api/v1/records/site/{sid}"), "*");
    assert_eq!((r.status, r.kind()), (409, "referenced"), "{r:?}");
    assert_eq!(r.body["error"]["by_table"], "panel_operator");
    assert_eq!(r.body["error"]["by_column"], "site_id");
    // Bad bodies: every bad field named at once.
    let r = m.post(
        "/api/v1/records/device",
        json!({"name": 5, "host": "h", "port": 70000000000i64, "protocol": "Serial",
               "alarm_above": "high", "colour": "red", "id": 4}),
    );
    assert_eq!((r.status, r.kind()), (400, "invalid_request"), "{r:?}");
    let fields = r.body["error"]["fields"].as_object().unwrap();
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "alarm_above",
            "colour",
            "id",
            "name",
            "port",
            "profile_id",
            "protocol"
        ],
        "{r:?}"
    );
    assert_eq!(
        fields["protocol"],
        "protocol: `Serial` is not one of ModbusTcp, opc-ua"
    );
    assert_eq!(fields["profile_id"], "profile_id is required");
    assert_eq!(fields["id"], "id is assigned by the store: leave it out");
    for body in ["[1]", "not json", ""] {
        let r = m.call(
            "POST",
            "/api/v1/records/site",
            Some(WRITE),
            None,
            Some(Json::String(body.into())),
        );
        assert_eq!(
            (r.status, r.kind()),
            (400, "invalid_request"),
            "{body}: {r:?}"
        );
    }
    // Unknown types, keys, fields, operators, pages.
    let r = m.get("/api/v1/records/nothing");
    assert_eq!((r.status, r.kind()), (404, "unknown_type"), "{r:?}");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("device"));
    let r = m.get("/api/v1/records/device/abc");
    assert_eq!((r.status, r.kind()), (404, "not_found"), "{r:?}");
    let r = m.get("/api/v1/records/device/123456");
    assert_eq!((r.status, r.kind()), (404, "not_found"), "{r:?}");
    for q in [
        "colour=red",
        "port.like=5",
        "port=five",
        "limit=0",
        "limit=1001",
        "offset=-1",
        "order=colour",
        "protocol=Serial",
        "alarm_above=NaN",
    ] {
        let r = m.get(&format!("/api/v1/records/device?{q}"));
        assert_eq!((r.status, r.kind()), (400, "invalid_request"), "{q}: {r:?}");
    }
    let r = m.put("/api/v1/records/site/424242", "*", json!({"name": "x"}));
    assert_eq!((r.status, r.kind()), (404, "not_found"), "{r:?}");
    let r = m.delete("/api/v1/records/site/424242", "*");
    assert_eq!((r.status, r.kind()), (404, "not_found"), "{r:?}");
}

fn concurrency(m: &Client) {
    let s = m.post("/api/v1/records/site", json!({"name": "south"}));
    let path = format!("/api/v1/records/site/{}", s.body["id"]);
    let first = s.etag.clone().unwrap();
    // No If-Match: refused, nothing written.
    let r = m.call("PUT", &path, Some(WRITE), None, Some(json!({"name": "s2"})));
    assert_eq!(
        (r.status, r.kind()),
        (428, "precondition_required"),
        "{r:?}"
    );
    let r = m.call("DELETE", &path, Some(WRITE), None, None);
    assert_eq!(r.status, 428, "{r:?}");
    let r = m.put(&path, "W/\"abc\"", json!({"name": "s2"}));
    assert_eq!((r.status, r.kind()), (400, "invalid_request"), "{r:?}");
    // Two editors read the same version; the first save wins ...
    let one = m.put(&path, &first, json!({"name": "south-1"}));
    assert_eq!(one.status, 200, "{one:?}");
    // ... the second gets the conflict with the current version, and the
    // first one's change stands.
    let two = m.put(&path, &first, json!({"name": "south-2"}));
    assert_eq!((two.status, two.kind()), (412, "stale"), "{two:?}");
    assert_eq!(
        format!(
            "\"{}\"",
            two.body["error"]["current_version"].as_str().unwrap()
        ),
        one.etag.clone().unwrap()
    );
    assert_eq!(m.get(&path).body["name"], "south-1");
    let r = m.delete(&path, &first);
    assert_eq!((r.status, r.kind()), (412, "stale"), "{r:?}");
    // Writing the same values back keeps the version.
    let same = m.put(
        &path,
        one.etag.as_deref().unwrap(),
        json!({"name": "south-1"}),
    );
    assert_eq!((same.status, &same.etag), (200, &one.etag));
    // The key in the body must be the path's.
    let r = m.put(&path, "*", json!({"id": 1, "name": "x"}));
    assert_eq!((r.status, r.kind()), (400, "invalid_request"), "{r:?}");
    // `*` overwrites whatever is stored; a deleted record is stale.
    let any = m.put(&path, "*", json!({"name": "south-3"}));
    assert_eq!(any.status, 200, "{any:?}");
    assert_eq!(m.delete(&path, any.etag.as_deref().unwrap()).status, 204);
    let r = m.put(&path, any.etag.as_deref().unwrap(), json!({"name": "x"}));
    assert_eq!(r.status, 404, "{r:?}");
}

fn secrets(m: &Client, store: &persist::Store) {
    let site = m.post("/api/v1/records/site", json!({"name": "east"}));
    let sid = site.body["id"].as_i64().unwrap();
    let op = m.post(
        "/api/v1/records/panel_operator",
        json!({"login": "bob", "password": "bob's secret", "site_id": sid, "notes": "a\nb"}),
    );
    assert_eq!(op.status, 201, "{op:?}");
    let oid = op.body["id"].as_i64().unwrap();
    let path = format!("/api/v1/records/panel_operator/{oid}");
    let read = m.get(&path);
    let list = m.get("/api/v1/records/panel_operator");
    for text in [
        op.body.to_string(),
        read.body.to_string(),
        list.body.to_string(),
    ] {
        assert!(!text.contains("bob's secret"), "{text}");
        assert!(!text.contains("password"), "{text}");
    }
    // A secret cannot be probed through a filter or an order.
    for q in ["password=bob's%20secret", "order=password", "password.gt=a"] {
        let r = m.get(&format!("/api/v1/records/panel_operator?{q}"));
        assert_eq!(r.status, 400, "{q}: {r:?}");
    }
    // A replace without the secret keeps it; with one, changes it.
    let r = m.put(
        &path,
        read.etag.as_deref().unwrap(),
        json!({"login": "bob", "site_id": sid, "notes": null}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let stored: PanelOperator = store.get(oid).unwrap().unwrap();
    assert_eq!(stored.password, "bob's secret");
    assert_eq!(stored.notes, None);
    let r = m.put(
        &path,
        "*",
        json!({"login": "bob", "site_id": sid, "password": "new secret"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let stored: PanelOperator = store.get(oid).unwrap().unwrap();
    assert_eq!(stored.password, "new secret");
    // A create must give it.
    let r = m.post(
        "/api/v1/records/panel_operator",
        json!({"login": "cy", "site_id": sid}),
    );
    assert_eq!(
        r.body["error"]["fields"]["password"],
        "password is required"
    );
}

fn backup(m: &Client, b: &Client, master_url: &str) {
    // Reads on the backup give the master's rows and the same versions.
    let ml = m.get("/api/v1/records/notification_profile");
    let bl = b.get("/api/v1/records/notification_profile");
    assert_eq!(bl.status, 200, "{bl:?}");
    assert_eq!(ml.body, bl.body);
    let pid = ml.body["items"][0]["id"].as_i64().unwrap();
    let path = format!("/api/v1/records/notification_profile/{pid}");
    let (mr, br) = (m.get(&path), b.get(&path));
    assert_eq!(
        mr.etag, br.etag,
        "a version read on the backup is the master's"
    );
    let (mn, bn) = (m.get("/api/v1/node"), b.get("/api/v1/node"));
    assert_eq!(
        (&mn.body["writable"], &mn.body["role"]),
        (&json!(true), &json!("Master"))
    );
    assert_eq!(bn.body["writable"], false, "{bn:?}");
    assert_eq!(bn.body["master_url"], master_url, "{bn:?}");
    // Every write on the backup is refused and names the master.
    let refusals = [
        b.post("/api/v1/records/site", json!({"name": "west"})),
        b.put(
            &path,
            br.etag.as_deref().unwrap(),
            json!({"name": "x", "enabled": true}),
        ),
        b.delete(&path, "*"),
    ];
    for r in refusals {
        assert_eq!((r.status, r.kind()), (409, "not_master"), "{r:?}");
        assert_eq!(r.body["error"]["master_url"], master_url, "{r:?}");
        assert_eq!(r.body["error"]["active_node"], "gw-a", "{r:?}");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(master_url),
            "{r:?}"
        );
    }
    // The master's version is good on the master.
    let r = m.put(
        &path,
        br.etag.as_deref().unwrap(),
        json!({"name": "renamed", "enabled": false}),
    );
    assert_eq!(r.status, 200, "{r:?}");
}

fn audit(m: &Client) {
    let a = m.call("GET", "/audit", None, None, None);
    let entries = a.body.as_array().unwrap();
    let text = a.body.to_string();
    for secret in [READ, WRITE, OPERATOR, "bob's secret", "new secret"] {
        assert!(!text.contains(secret), "{secret} in the audit log");
    }
    let find = |who: &str, action: &str, ok: bool| {
        entries
            .iter()
            .any(|e| e["who"] == who && e["action"] == action && e["ok"] == ok)
    };
    assert!(
        find("api:tool", "POST /api/v1/records/device", true),
        "{text}"
    );
    assert!(
        find("api:tool", "POST /api/v1/records/device", false),
        "{text}"
    );
    assert!(
        find(
            "a read-only API token",
            "POST /api/v1/records/notification_profile",
            false
        ),
        "{text}"
    );
    assert!(
        find(
            "a wrong API token",
            "POST /api/v1/records/notification_profile",
            false
        ),
        "{text}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["who"] == "api:tool" && e["action"].as_str().unwrap().starts_with("DELETE")),
        "{text}"
    );
}

fn openapi(m: &Client, dir: &Path) {
    let doc = m.get("/openapi.json");
    assert_eq!(doc.status, 200, "{doc:?}");
    let schemas = &doc.body["components"]["schemas"];
    let device = &schemas["Device_device"];
    assert_eq!(device["title"], "Devices");
    assert_eq!(device["properties"]["port"]["default"], 502);
    assert_eq!(device["properties"]["port"]["title"], "Port");
    assert_eq!(device["properties"]["id"]["readOnly"], true);
    assert_eq!(
        device["properties"]["protocol"]["enum"],
        json!(["ModbusTcp", "opc-ua"])
    );
    assert_eq!(
        device["properties"]["profile_id"]["x-references"],
        "notification_profile"
    );
    let counter = &schemas["Counter_production_counter"]["properties"]["value"];
    assert_eq!(counter["minimum"], 0.0);
    let op = &schemas["PanelOperator_panel_operator"]["properties"];
    assert_eq!(op["password"]["writeOnly"], true);
    assert_eq!(op["notes"]["nullable"], true);
    assert_eq!(op["notes"]["x-multiline"], true);
    for p in ["/api/v1/records/tag", "/api/v1/records/tag/{key}"] {
        assert!(doc.body["paths"][p].is_object(), "{p}");
    }
    let file = dir.join("openapi.json");
    std::fs::write(&file, doc.body.to_string()).unwrap();
    validate_openapi(&file);
}

/// Runs `openapi-spec-validator` (PyPI) on the document; fails, with how to
/// install it, when it is missing.
fn validate_openapi(file: &Path) {
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => panic!(
            "python3 is needed to validate the OpenAPI document ({e}); install it and \
             `python3 -m pip install openapi-spec-validator`"
        ),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named openapi_spec_validator") {
        panic!(
            "openapi-spec-validator is not installed: `python3 -m pip install \
             openapi-spec-validator` (the test validates /openapi.json with it)"
        );
    }
    assert!(
        out.status.success(),
        "the OpenAPI document is not valid:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A committed change reaches an open event stream, on the master and, by
/// replication, on the backup.
fn events(m: &Client, b: &Client) {
    let open = |c: &Client| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let resp = agent
            .get(format!("{}/api/v1/events?type=site", c.base))
            .header("Authorization", format!("Bearer {READ}"))
            .call()
            .unwrap();
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            "text/event-stream"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let reader = std::io::BufReader::new(resp.into_body().into_reader());
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // The stream says it is live before anything happens.
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), ": live");
        rx
    };
    let (mrx, brx) = (open(m), open(b));
    let s = m.post("/api/v1/records/site", json!({"name": "streamed"}));
    let key = s.body["id"].clone();
    for rx in [mrx, brx] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let event = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("an event for the insert");
            if let Some(data) = line.strip_prefix("data: ") {
                break serde_json::from_str::<Json>(data).unwrap();
            }
        };
        assert_eq!(event["table"], "site", "{event}");
        assert_eq!(event["op"], "insert", "{event}");
        assert_eq!(event["key"], key, "{event}");
    }
}

/// What a write through the API costs next to the same write through the
/// typed store, in the same run: figures printed, nothing asserted on time.
/// `PERSIST_API_BENCH_N` sets the writes per side (default 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_write_cost_against_a_typed_insert() {
    let n: usize = std::env::var("PERSIST_API_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path()).await;
    let url = format!("http://{}", a.status_addr());
    let store = a.store().clone();
    let (typed, api, get) = tokio::task::spawn_blocking(move || {
        let m = Client::new(&url);
        until("the master takes writes", || {
            m.post("/api/v1/records/site", json!({"name": "warm-up"}))
                .status
                == 201
        });
        let t = Instant::now();
        for i in 0..n {
            store
                .insert(&Site {
                    id: 0,
                    name: format!("typed-{i}"),
                })
                .unwrap();
        }
        let typed = t.elapsed();
        let t = Instant::now();
        for i in 0..n {
            let r = m.post("/api/v1/records/site", json!({"name": format!("api-{i}")}));
            assert_eq!(r.status, 201);
        }
        let api = t.elapsed();
        let t = Instant::now();
        for _ in 0..n {
            assert_eq!(m.get("/api/v1/records/site/1").status, 200);
        }
        (typed, api, t.elapsed())
    })
    .await
    .unwrap();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "{n} writes: typed insert {:.0} us each, API POST {:.0} us each (ratio {:.2}); \
         API GET by key {:.0} us each",
        per(typed),
        per(api),
        api.as_secs_f64() / typed.as_secs_f64(),
        per(get)
    );
    b.shutdown().await;
    a.shutdown().await;
}
