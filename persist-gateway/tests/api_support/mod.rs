//! What the REST API's tests share: a gateway pair from config files with
//! the sample modules and a module of secrets and restricting references.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use alarm_module::AlarmModule;
use counter_module::Counters;
use persist::module::{Module, ModuleContext, ModuleError};
use persist::PersistentRecord;
use persist_gateway::{Config, Gateway, RunningGateway};

pub const OPERATOR: &str = "the operator token of the pair";
pub const READ: &str = "a read-only api token for scada";
pub const WRITE: &str = "a write api token for the config tool";

/// A site operators belong to; a site with operators cannot be deleted.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(title = "Sites")]
pub struct Site {
    /// Assigned by the store.
    #[persist(identity)]
    pub id: i64,
    /// Unique.
    #[persist(unique, descriptive, label = "Name")]
    pub name: String,
}

/// Someone who may log in to a panel.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(title = "Panel operators")]
pub struct PanelOperator {
    /// Assigned by the store.
    #[persist(identity)]
    pub id: i64,
    /// Unique.
    #[persist(unique, descriptive, label = "Login")]
    pub login: String,
    /// Never sent back.
    #[persist(secret, label = "Password", help = "Never shown again once saved.")]
    pub password: String,
    /// Where they work (restrict: a site with operators stays).
    #[persist(references = Site, label = "Site")]
    pub site_id: i64,
    /// Free text.
    #[persist(multiline, label = "Notes")]
    pub notes: Option<String>,
}

pub struct Panels;

impl Module for Panels {
    fn name(&self) -> &'static str {
        "panels"
    }
    fn version(&self) -> &'static str {
        "1.0.0"
    }
    fn register(&self, ctx: &mut ModuleContext) -> Result<(), ModuleError> {
        ctx.record::<Site>()?;
        ctx.record::<PanelOperator>()
    }
}

pub fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

pub fn config(dir: &Path, id: &str, role: &str, link: &str, peer_url: Option<&str>) -> PathBuf {
    let link = if role == "master" {
        format!("listen = \"{link}\"")
    } else {
        format!("peer = \"{link}\"")
    };
    let peer_url = peer_url
        .map(|u| format!("peer_url = \"{u}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"[node]
id = "{id}"
role = "{role}"
cluster = "api-test"

[link]
{link}
secret_file = "pair.secret"

[redundancy]
heartbeat_ms = 50
failover_timeout_ms = 5000
startup_allowance_ms = 300

[database]
sqlite = "{id}.db"

[status]
listen = "127.0.0.1:0"
operator_token_file = "operator.token"

[api]
{peer_url}
[[api.token]]
name = "scada"
role = "read"
file = "scada.token"

[[api.token]]
name = "tool"
role = "write"
file = "tool.token"
"#
    );
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub async fn start(path: &Path) -> RunningGateway {
    Gateway::new(Config::load(path).unwrap())
        .module(AlarmModule::new())
        .module(Counters::new())
        .module(Panels)
        .start()
        .await
        .unwrap()
}

/// A master and its backup, up, from config files in `dir`; the backup's
/// `peer_url` is the master's status URL.
pub async fn pair(dir: &Path) -> (RunningGateway, RunningGateway) {
    write(dir, "pair.secret", "a pair secret of 32 bytes, really\n");
    write(dir, "operator.token", &format!("{OPERATOR}\n"));
    write(dir, "scada.token", &format!("{READ}\n"));
    write(dir, "tool.token", &format!("{WRITE}\n"));
    let a = start(&config(dir, "gw-a", "master", "127.0.0.1:0", None)).await;
    let master_url = format!("http://{}", a.status_addr());
    let link = a.link_addr().unwrap().to_string();
    let b = start(&config(dir, "gw-b", "backup", &link, Some(&master_url))).await;
    (a, b)
}
