//! The configuration pages in a real browser: headless Chromium driven over
//! WebDriver (`chromedriver`, Debian's `chromium` and `chromium-driver`) by
//! fantoccini, against a real gateway pair. A device created through the
//! form on the master appears live on the backup's page; the validator's
//! message shows beside the form; the backup's form is read-only and links
//! to the master; deleting a profile with devices shows the cascade first;
//! a record with referencing rows shows why it cannot go; two browsers
//! editing one record get the conflict. Screenshots are kept under
//! `target/tmp/api-pages/` (look at them).
//!
//! The test fails, saying what to install, when the browser or the driver
//! is missing; `PERSIST_CHROMIUM` and `PERSIST_CHROMEDRIVER` override their
//! paths.

mod api_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api_support::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value as Json};

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Driver {
    let path = std::env::var("PERSIST_CHROMEDRIVER").unwrap_or("/usr/bin/chromedriver".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{path}: {e}; the browser tests need Chromium and its driver: \
                 `apt-get install chromium chromium-driver`"
            )
        });
    let d = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

async fn browser(d: &Driver) -> Client {
    let chromium = std::env::var("PERSIST_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: `apt-get install chromium chromium-driver`"
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1100,900"]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&d.url)
        .await
        .expect("a browser session")
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("api-pages");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
    contrast(c, name).await;
}

/// What the browser renders, measured in the browser: every visible input and
/// control has a label or a name and is in the tab order; every visible text
/// (and every input's value) against the background it is drawn on, by
/// WCAG 2's contrast ratio: at least 4.5:1, 3:1 for large text. Disabled
/// controls are exempt, as WCAG exempts inactive components.
const CONTRAST_AUDIT: &str = r#"
const lum = ([r, g, b]) => {
  const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
};
const rgba = (s) => { const m = s.match(/[\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
const over = (top, bottom) => top.slice(0, 3).map((c, i) => c * top[3] + bottom[i] * (1 - top[3]));
function background(el) {
  const layers = [];
  for (let e = el; e; e = e.parentElement) {
    const c = rgba(getComputedStyle(e).backgroundColor);
    if (c[3] > 0) layers.push(c);
    if (c[3] >= 1) break;
  }
  let bg = [255, 255, 255];
  for (const l of layers.reverse()) bg = over(l, bg);
  return bg;
}
const bad = [];
for (const el of document.querySelectorAll("input, select, textarea, button, a")) {
  if (el.getClientRects().length === 0 || el.type === "hidden") continue;
  const named = el.matches("input, select, textarea")
    ? el.labels.length > 0 || el.getAttribute("aria-label")
    : (el.innerText || el.getAttribute("aria-label") || "").trim() !== "";
  if (!named) bad.push(`${el.tagName.toLowerCase()}#${el.id}: no label or name`);
  if (el.tabIndex < 0 && !el.disabled) bad.push(`${el.tagName.toLowerCase()}#${el.id}: out of the tab order`);
}
for (const el of document.querySelectorAll("body *")) {
  const st = getComputedStyle(el);
  if (st.visibility === "hidden" || st.display === "none" || el.getClientRects().length === 0) continue;
  if (el.closest(":disabled") || el.matches(":disabled")) continue;
  const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim() !== "");
  const field = el.matches("input:not([type=checkbox]):not([type=radio]), select, textarea");
  if (!own && !field) continue;
  const bg = background(el);
  const fg = over(rgba(st.color), bg);
  const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
  const ratio = (hi + 0.05) / (lo + 0.05);
  const px = parseFloat(st.fontSize), bold = parseInt(st.fontWeight, 10) >= 700;
  const need = px >= 24 || (bold && px >= 18.66) ? 3 : 4.5;
  if (ratio < need) {
    const what = (el.innerText || el.value || "").trim().slice(0, 40);
    bad.push(`${el.tagName.toLowerCase()}.${el.className} "${what}": ${ratio.toFixed(2)}:1 (${st.color} on rgb(${bg.map(Math.round)})), needs ${need}:1`);
  }
}
return bad;
"#;

async fn contrast(c: &Client, name: &str) {
    let found = c.execute(CONTRAST_AUDIT, vec![]).await.unwrap();
    let bad: Vec<String> = serde_json::from_value(found).unwrap();
    assert!(
        bad.is_empty(),
        "{name}: unlabelled controls or text below WCAG contrast:\n{}",
        bad.join("\n")
    );
}

/// Waits until the element matching `css` has text containing `want`.
async fn text_of(c: &Client, css: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if t.contains(want) {
                    return t;
                }
                last = t;
            }
        }
        assert!(
            Instant::now() < deadline,
            "`{css}` never showed `{want}`; last: `{last}`"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn open(c: &Client, url: &str, token: &str) {
    c.goto(url).await.unwrap();
    let input = c
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    input.send_keys(token).await.unwrap();
    c.find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_of(c, "h1", "Configuration").await;
}

async fn go(c: &Client, hash: &str, heading: &str) {
    c.execute(&format!("location.hash = {};", json!(hash)), vec![])
        .await
        .unwrap();
    text_of(c, "h1", heading).await;
}

async fn fill(c: &Client, field: &str, value: &str) {
    let e = c.find(Locator::Css(&format!("#f-{field}"))).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn select(c: &Client, field: &str, text: &str) {
    let e = c.find(Locator::Css(&format!("#f-{field}"))).await.unwrap();
    e.select_by_label(text).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

fn http(base: &str, method: &str, path: &str, body: Option<Json>) -> (u16, Json) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("Authorization", format!("Bearer {WRITE}"))
        .header("If-Match", "*")
        .header("Content-Type", "application/json");
    let mut r = match body {
        Some(b) => agent.run(req.body(b.to_string()).unwrap()).unwrap(),
        None => agent.run(req.body(()).unwrap()).unwrap(),
    };
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Json::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path()).await;
    let (master, backup) = (
        format!("http://{}", a.status_addr()),
        format!("http://{}", b.status_addr()),
    );
    let m2 = master.clone();
    let (pid, sid) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let p = loop {
            let (code, p) = http(
                &m2,
                "POST",
                "/api/v1/records/notification_profile",
                Some(json!({"name": "day shift"})),
            );
            if code == 201 {
                break p;
            }
            assert!(Instant::now() < deadline, "the master takes writes: {p}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let (_, s) = http(
            &m2,
            "POST",
            "/api/v1/records/site",
            Some(json!({"name": "north"})),
        );
        let (code, o) = http(
            &m2,
            "POST",
            "/api/v1/records/panel_operator",
            Some(json!({"login": "ann", "password": "pw", "site_id": s["id"]})),
        );
        assert_eq!(code, 201, "{o}");
        (p["id"].as_i64().unwrap(), s["id"].as_i64().unwrap())
    })
    .await
    .unwrap();

    let d = driver();
    let (ca, cb, cc) = (browser(&d).await, browser(&d).await, browser(&d).await);
    // The backup's list is open before the device exists.
    open(&cb, &format!("{backup}/pages"), READ).await;
    shot(&cb, "01-backup-index").await;
    go(&cb, "#/device", "Devices").await;
    text_of(&cb, "#readonly", "Read-only").await;
    // Create a device through the master's form; the validator refuses port 0.
    open(&ca, &format!("{master}/pages"), WRITE).await;
    go(&ca, "#/device/new", "New: Devices").await;
    fill(&ca, "name", "press-7").await;
    fill(&ca, "host", "10.0.0.7").await;
    fill(&ca, "port", "0").await;
    select(&ca, "protocol", "opc-ua").await;
    select(&ca, "profile_id", "day shift").await;
    fill(&ca, "alarm_above", "80.5").await;
    click(&ca, "#save").await;
    text_of(&ca, "#form-error", "port 0 is not a TCP port").await;
    shot(&ca, "02-master-validation-message").await;
    // Corrected and saved from the keyboard alone: Enter in the field.
    fill(&ca, "port", "502\u{E007}").await;
    text_of(&ca, "#flash", "Saved Devices").await;
    shot(&ca, "03-master-list-after-save").await;
    // The backup's page shows it without a reload.
    let row = text_of(&cb, "#rows tbody", "press-7").await;
    assert!(
        row.contains("day shift"),
        "the reference by its name: {row}"
    );
    assert!(row.contains("opc-ua"), "{row}");
    shot(&cb, "04-backup-list-live").await;
    // The backup's form is read-only and links to the master.
    let did = {
        let (_, l) = http(&master, "GET", "/api/v1/records/device?name=press-7", None);
        l["items"][0]["id"].as_i64().unwrap()
    };
    go(&cb, &format!("#/device/{did}"), "Devices").await;
    text_of(&cb, "#readonly", "Read-only").await;
    assert!(
        cb.find(Locator::Css("#save")).await.is_err(),
        "no save on the backup"
    );
    let host = cb.find(Locator::Css("#f-host")).await.unwrap();
    assert!(host.attr("disabled").await.unwrap().is_some());
    let link = cb.find(Locator::Css("#master-link")).await.unwrap();
    let href = link.attr("href").await.unwrap().unwrap();
    assert!(href.starts_with(&format!("{master}/pages")), "{href}");
    shot(&cb, "05-backup-form-read-only").await;
    // Two browsers edit the same device: the second save is refused.
    open(&cc, &format!("{master}/pages"), WRITE).await;
    go(&ca, &format!("#/device/{did}"), "Devices").await;
    go(&cc, &format!("#/device/{did}"), "Devices").await;
    fill(&ca, "host", "10.0.0.70").await;
    click(&ca, "#save").await;
    text_of(&ca, "#flash", "Saved").await;
    fill(&cc, "host", "10.0.0.71").await;
    click(&cc, "#save").await;
    text_of(&cc, "#form-error", "Someone else changed this record").await;
    shot(&cc, "06-conflict").await;
    let (_, dev) = http(
        &master,
        "GET",
        &format!("/api/v1/records/device/{did}"),
        None,
    );
    assert_eq!(dev["host"], "10.0.0.70", "the first save stands");
    // The browser checks bounds before sending: a counter below its minimum.
    go(&ca, "#/production_counter/new", "New: Production counters").await;
    fill(&ca, "name", "line-1").await;
    fill(&ca, "value", "-1").await;
    click(&ca, "#save").await;
    let valid = ca
        .execute(
            "return document.getElementById('f-value').validity.valid;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(valid, json!(false));
    let (_, counters) = http(&master, "GET", "/api/v1/records/production_counter", None);
    assert_eq!(counters["total"], 0, "nothing was sent");
    // A site with an operator cannot be deleted: the page says why first.
    go(&ca, &format!("#/site/{sid}"), "Sites").await;
    click(&ca, "#delete").await;
    text_of(&ca, "#delete-preview", "cannot be deleted").await;
    text_of(&ca, "#delete-preview", "1 × Panel operators").await;
    // Deleting the profile shows the cascade, then deletes both.
    go(
        &ca,
        &format!("#/notification_profile/{pid}"),
        "Notification profiles",
    )
    .await;
    click(&ca, "#delete").await;
    text_of(&ca, "#delete-preview", "also deletes 1 × Devices").await;
    shot(&ca, "07-delete-cascade-preview").await;
    click(&ca, "#confirm-delete").await;
    text_of(&ca, "#flash", "Deleted").await;
    let (code, _) = http(
        &master,
        "GET",
        &format!("/api/v1/records/device/{did}"),
        None,
    );
    assert_eq!(code, 404, "the device went with its profile");
    // ... and the backup's list follows.
    go(&cb, "#/device", "Devices").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // The live list re-renders its rows: an element found just before
        // a re-render is stale by the time its text is read (seen under
        // load); that is "not yet", as in `wait_text`.
        let t = match cb.find(Locator::Css("#rows tbody")).await {
            Ok(e) => e.text().await.ok(),
            Err(_) => None,
        };
        if t.is_some_and(|t| !t.contains("press-7")) {
            break;
        }
        assert!(Instant::now() < deadline, "the backup still lists it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shot(&cb, "08-backup-after-delete").await;
    for c in [ca, cb, cc] {
        c.close().await.unwrap();
    }
    drop(d);
    b.shutdown().await;
    a.shutdown().await;
}
