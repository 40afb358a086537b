//! Source selection: the one place that turns "where do Services come from"
//! into a running source. The agent and ferry-dns both call [`start`] and
//! get the same two channels back, whatever the source:
//!
//! - the catalog ([`Snapshot`]s), ready once every required kind has had
//!   its first full listing;
//! - the source's own state ([`SourceStatus`]): per kind, whether it is
//!   listed, watching or retrying, for `/status` and metrics.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::convert::Kind;
use crate::error::SourceError;
use crate::model::Snapshot;

/// Where the catalog comes from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A directory of YAML/JSON, followed live (the standalone default).
    YamlDir(PathBuf),
    /// A file loaded once.
    Fixture(PathBuf),
    /// The Kubernetes API.
    Kubernetes(KubeConfig),
}

/// How to reach the Kubernetes API.
#[derive(Debug, Clone, Default)]
pub struct KubeConfig {
    /// A kubeconfig file; without one, the in-cluster configuration (the
    /// pod's service account).
    pub kubeconfig: Option<PathBuf>,
    /// The API server's address, replacing the configuration's: in a
    /// cluster without kube-proxy the `kubernetes` Service cannot be reached
    /// before Ferry itself is up (Cilium's `k8sServiceHost`).
    pub api_server: Option<String>,
}

/// A running source.
pub struct Source {
    pub snapshots: watch::Receiver<Snapshot>,
    pub status: watch::Receiver<SourceStatus>,
    /// The source's task; it ends when every snapshot receiver is dropped.
    pub task: JoinHandle<()>,
}

/// What a source is doing, per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    /// `yaml-dir`, `fixture` or `kubernetes`.
    pub source: &'static str,
    pub kinds: Vec<KindStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindStatus {
    pub kind: Kind,
    pub state: KindState,
    /// The first full listing is done.
    pub listed: bool,
    /// Full listings since start (the first included): a relist after
    /// `410 Gone` or a restart of the watch adds one.
    pub lists: u64,
    /// Failed requests (list or watch) since start.
    pub errors: u64,
    /// The last failure, until a request succeeds again.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KindState {
    /// Listing (the first time, or relisting).
    Listing,
    /// Listed and following changes.
    Watching,
    /// The last request failed; retrying with backoff. The catalog keeps
    /// the last good state meanwhile.
    Retrying,
}

impl KindState {
    pub fn as_str(self) -> &'static str {
        match self {
            KindState::Listing => "listing",
            KindState::Watching => "watching",
            KindState::Retrying => "retrying",
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl SourceStatus {
    pub(crate) fn new(source: &'static str, kinds: &[Kind]) -> Self {
        let kinds = kinds
            .iter()
            .map(|&kind| KindStatus {
                kind,
                state: KindState::Listing,
                listed: false,
                lists: 0,
                errors: 0,
                last_error: None,
            })
            .collect();
        Self { source, kinds }
    }

    /// A source that lists everything at once, and is done.
    fn listed(source: &'static str, kinds: &[Kind]) -> Self {
        let mut s = Self::new(source, kinds);
        for k in &mut s.kinds {
            k.state = KindState::Watching;
            k.listed = true;
            k.lists = 1;
        }
        s
    }

    pub(crate) fn kind_mut(&mut self, kind: Kind) -> Option<&mut KindStatus> {
        self.kinds.iter_mut().find(|k| k.kind == kind)
    }
}

/// Start the configured source. `kinds` are the kinds the consumer needs:
/// readiness waits for the first full listing of each, and the Kubernetes
/// source watches only those.
pub async fn start(config: SourceConfig, kinds: &[Kind]) -> Result<Source, SourceError> {
    match config {
        SourceConfig::YamlDir(dir) => {
            let (snapshots, task) = crate::yaml_dir::watch_dir(&dir).await?;
            let (status_tx, status) = watch::channel(SourceStatus::listed("yaml-dir", kinds));
            // The status never changes; it lives as long as the source.
            let task = tokio::spawn(async move {
                let _status = status_tx;
                let _ = task.await;
            });
            Ok(Source { snapshots, status, task })
        }
        SourceConfig::Fixture(path) => {
            let (catalog, errors) = tokio::task::spawn_blocking(move || crate::fixture::load_fixture(&path))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            for e in &errors {
                tracing::warn!(error = %e, "fixture object skipped");
            }
            let snap = Snapshot { catalog: Arc::new(catalog), ready: true, generation: 1 };
            let (tx, snapshots) = watch::channel(snap);
            let (status_tx, status) = watch::channel(SourceStatus::listed("fixture", kinds));
            let task = tokio::spawn(async move {
                tx.closed().await;
                drop(status_tx);
            });
            Ok(Source { snapshots, status, task })
        }
        SourceConfig::Kubernetes(kube) => crate::kube_source::start(kube, kinds).await,
    }
}

/// The source flags both binaries take (`#[command(flatten)]`).
#[cfg(feature = "cli")]
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SourceArgs {
    /// Directory of Kubernetes YAML/JSON (Service, EndpointSlice, Node), followed live: the
    /// standalone mode.
    #[arg(long, env = "FERRY_YAML_DIR")]
    pub yaml_dir: Option<PathBuf>,
    /// A YAML or JSON file (a List, or documents) loaded once as the whole catalog.
    #[arg(long, conflicts_with = "yaml_dir")]
    pub fixture: Option<PathBuf>,
    /// Follow the Kubernetes API: with --kubeconfig, or else the in-cluster configuration
    /// (the pod's service account).
    #[arg(long, env = "FERRY_KUBERNETES")]
    pub kubernetes: bool,
    /// kubeconfig file for the Kubernetes API (implies --kubernetes).
    #[arg(long, env = "FERRY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL, replacing the configuration's (implies --kubernetes). For
    /// clusters without kube-proxy, where the `kubernetes` Service is not reachable before
    /// Ferry is up. Empty: unset.
    #[arg(long, env = "FERRY_API_SERVER")]
    pub api_server: Option<String>,
}

#[cfg(feature = "cli")]
impl SourceArgs {
    /// The source these flags select; an error names the conflict.
    pub fn config(&self) -> Result<SourceConfig, String> {
        let api_server = self.api_server.clone().filter(|s| !s.trim().is_empty());
        let kubernetes = self.kubernetes || self.kubeconfig.is_some() || api_server.is_some();
        match (&self.yaml_dir, &self.fixture, kubernetes) {
            (Some(dir), None, false) => Ok(SourceConfig::YamlDir(dir.clone())),
            (None, Some(file), false) => Ok(SourceConfig::Fixture(file.clone())),
            (None, None, true) => {
                Ok(SourceConfig::Kubernetes(KubeConfig { kubeconfig: self.kubeconfig.clone(), api_server }))
            }
            (None, None, false) => Err("no source: give --yaml-dir DIR (standalone), --fixture FILE, or --kubernetes \
                     (with --kubeconfig or --api-server as needed)"
                .into()),
            _ => Err("choose one source: --yaml-dir, --fixture, or the Kubernetes API \
                      (--kubernetes, --kubeconfig, --api-server)"
                .into()),
        }
    }
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        source: SourceArgs,
    }

    fn config(args: &[&str]) -> Result<SourceConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        cli.source.config()
    }

    #[test]
    fn flags_select_one_source() {
        assert!(matches!(config(&["--yaml-dir", "d"]), Ok(SourceConfig::YamlDir(_))));
        assert!(matches!(config(&["--fixture", "f"]), Ok(SourceConfig::Fixture(_))));
        assert!(matches!(
            config(&["--kubernetes"]),
            Ok(SourceConfig::Kubernetes(KubeConfig { kubeconfig: None, api_server: None }))
        ));
        let Ok(SourceConfig::Kubernetes(k)) = config(&["--api-server", "https://10.0.0.1:6443"]) else {
            panic!("--api-server selects the API");
        };
        assert_eq!(k.api_server.as_deref(), Some("https://10.0.0.1:6443"));
        assert!(matches!(config(&["--kubeconfig", "k"]), Ok(SourceConfig::Kubernetes(_))));
        // An empty address (an unset ConfigMap key) is no address.
        assert!(matches!(config(&["--yaml-dir", "d", "--api-server", ""]), Ok(SourceConfig::YamlDir(_))));
        assert!(config(&[]).unwrap_err().contains("no source"));
        assert!(config(&["--yaml-dir", "d", "--kubernetes"]).unwrap_err().contains("choose one"));
        assert!(config(&["--yaml-dir", "d", "--fixture", "f"]).is_err());
    }
}

/// The source's state as metrics, read from its status channel at scrape
/// time (one definition for the agent and ferry-dns):
/// `source_state{source,kind,state}` (1 for the current state),
/// `source_listed{kind}`, `source_lists_total{kind}`,
/// `source_errors_total{kind}`.
#[derive(Debug)]
pub struct StatusCollector(watch::Receiver<SourceStatus>);

impl StatusCollector {
    pub fn new(status: watch::Receiver<SourceStatus>) -> Self {
        Self(status)
    }
}

impl prometheus_client::collector::Collector for StatusCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::TypedMetric;

        type Row<M> = (Vec<(&'static str, &'static str)>, M);
        fn family<M: EncodeMetric + TypedMetric>(
            encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
            name: &str,
            help: &str,
            rows: Vec<Row<M>>,
        ) -> Result<(), std::fmt::Error> {
            let mut enc = encoder.encode_descriptor(name, help, None, M::TYPE)?;
            for (labels, m) in rows {
                m.encode(enc.encode_family(&labels)?)?;
            }
            Ok(())
        }
        let status = self.0.borrow().clone();
        let mut state = Vec::new();
        let (mut listed, mut lists, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for k in &status.kinds {
            for s in [KindState::Listing, KindState::Watching, KindState::Retrying] {
                let labels = vec![("source", status.source), ("kind", k.kind.as_str()), ("state", s.as_str())];
                state.push((labels, ConstGauge::new(i64::from(k.state == s))));
            }
            let labels = vec![("kind", k.kind.as_str())];
            listed.push((labels.clone(), ConstGauge::new(i64::from(k.listed))));
            lists.push((labels.clone(), ConstCounter::new(k.lists)));
            errors.push((labels, ConstCounter::new(k.errors)));
        }
        family(&mut encoder, "source_state", "The catalog source's state per kind (1: current)", state)?;
        family(&mut encoder, "source_listed", "Whether the kind's first full listing is done", listed)?;
        family(&mut encoder, "source_lists", "Full listings of the kind (relists included)", lists)?;
        family(&mut encoder, "source_errors", "Failed list or watch requests of the kind", errors)?;
        Ok(())
    }
}
