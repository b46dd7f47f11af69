//! The JetStream pieces both sides use: the stream, the snapshot object
//! store and the status bucket, each bounded in time.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use crate::config::{FleetConfig, FleetKey};
use crate::error::{bounded, FleetError, Result};
use crate::wire::{open_snapshot, snapshot_name, snapshot_position, FleetSnapshot};

/// How long an entry stays de-duplicable by its message id.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

pub(crate) struct Fleet {
    pub(crate) cfg: FleetConfig,
    pub(crate) js: jetstream::Context,
    pub(crate) key: FleetKey,
}

impl Fleet {
    pub(crate) async fn connect(cfg: &FleetConfig) -> Result<Fleet> {
        cfg.check()?;
        let key = cfg.load_key()?;
        let client = cfg.connect().await?;
        let mut js = jetstream::new(client);
        js.set_timeout(cfg.request_timeout());
        Ok(Fleet {
            cfg: cfg.clone(),
            js,
            key,
        })
    }

    pub(crate) fn t(&self) -> Duration {
        self.cfg.request_timeout()
    }

    /// The entries stream (created by the publisher, looked up by edges).
    pub(crate) async fn stream(&self, create: bool) -> Result<stream::Stream> {
        if create {
            let config = stream::Config {
                name: self.cfg.stream_name(),
                subjects: vec![self.cfg.subject()],
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                max_message_size: (self.cfg.max_entry_bytes + 4096) as i32,
                ..Default::default()
            };
            bounded(
                "create stream",
                self.t(),
                self.js.get_or_create_stream(config),
            )
            .await
        } else {
            bounded(
                "get stream",
                self.t(),
                self.js.get_stream(self.cfg.stream_name()),
            )
            .await
        }
    }

    pub(crate) async fn snapshots(&self, create: bool) -> Result<object_store::ObjectStore> {
        let name = self.cfg.snapshot_bucket();
        match bounded(
            "get object store",
            self.t(),
            self.js.get_object_store(&name),
        )
        .await
        {
            Ok(s) => Ok(s),
            Err(_) if create => {
                bounded(
                    "create object store",
                    self.t(),
                    self.js.create_object_store(object_store::Config {
                        bucket: name,
                        storage: stream::StorageType::File,
                        ..Default::default()
                    }),
                )
                .await
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn status_bucket(&self) -> Result<kv::Store> {
        kv_bucket(
            &self.js,
            &self.cfg.status_bucket(),
            Duration::ZERO,
            self.t(),
        )
        .await
    }

    /// The (position, stream sequence) of the snapshots present, ascending.
    pub(crate) async fn snapshot_positions(
        &self,
        store: &object_store::ObjectStore,
    ) -> Result<Vec<(u64, u64)>> {
        let t = self.t();
        let mut positions = bounded("list snapshots", t, async {
            let mut list = store.list().await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            while let Some(info) = list.next().await {
                let info = info.map_err(|e| e.to_string())?;
                if !info.deleted {
                    if let Some(p) = snapshot_position(&info.name) {
                        out.push(p);
                    }
                }
            }
            Ok::<_, String>(out)
        })
        .await?;
        positions.sort_unstable();
        Ok(positions)
    }

    /// Reads and authenticates the snapshot at `position`. Its size is
    /// bounded by the time it takes (a large snapshot gets 10x the request
    /// timeout).
    pub(crate) async fn read_snapshot(
        &self,
        store: &object_store::ObjectStore,
        (position, stream_seq): (u64, u64),
    ) -> Result<FleetSnapshot> {
        let name = snapshot_name(position, stream_seq);
        let bytes = bounded("read snapshot", self.t() * 10, async {
            let mut obj = store.get(&name).await.map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            obj.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(buf)
        })
        .await?;
        let snap = open_snapshot(&self.key, &self.cfg.cluster, &bytes, &name)?;
        if snap.position != position {
            return Err(FleetError::Refused {
                what: name,
                reason: format!("holds position {}", snap.position),
            });
        }
        Ok(snap)
    }
}

/// Gets or creates a KV bucket. The bucket's stream is created here, as
/// the KV convention lays it out (`KV_<bucket>`, subjects `$KV.<bucket>.>`,
/// one value per key, roll-ups, direct gets), because the client's own
/// `create_key_value` first asks for account limits in a form a 2.9 server
/// does not answer.
pub(crate) async fn kv_bucket(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
    t: Duration,
) -> Result<kv::Store> {
    if let Ok(s) = bounded("get bucket", t, js.get_key_value(bucket)).await {
        return Ok(s);
    }
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    bounded("create bucket", t, js.get_or_create_stream(config)).await?;
    bounded("get bucket", t, js.get_key_value(bucket)).await
}
