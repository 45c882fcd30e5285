//! Hot reload: the live config generation, and the swap to a new one (`SIGHUP`,
//! `POST /admin/v1/reload`). A reload re-reads the config file and the environment, validates
//! the whole tree, compiles it, and only then swaps it in, atomically: a config that fails
//! anywhere changes nothing. Requests take the generation current at their arrival and keep it
//! to their end, so open streams finish under the limits and prices they were admitted with.
//! Users' windows and spend live in the user registry, which a reload keeps.

mod diff;

pub use diff::{Changes, RESTART_ONLY};

use crate::config::{load, Config, ConfigError, ConfigSource};
use crate::http::{AppState, Lasting};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// Where a reload reads the configuration.
#[derive(Debug, Clone)]
pub enum Source {
    /// The process: `--config` (else `TOLLGATE_CONFIG`) and the environment as it is now.
    Process { file: Option<PathBuf> },
    /// A fixed file and environment (in-process tests).
    Fixed(ConfigSource),
    /// Started from a config value with no source: reloads are refused.
    None,
}

impl Source {
    fn read(&self) -> Result<Config, ConfigError> {
        match self {
            Source::Process { file } => load(&ConfigSource {
                file: file.clone(),
                env: std::env::vars().collect::<BTreeMap<_, _>>(),
            }),
            Source::Fixed(source) => load(source),
            Source::None => Err(ConfigError::invalid(
                "(source)",
                "this gateway was started from a config value, not a file: nothing to re-read",
            )),
        }
    }
}

/// A reload that was applied.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub generation: u64,
    pub changes: Changes,
}

/// The generation serving new requests, and how to make the next one.
pub struct Live {
    current: ArcSwap<AppState>,
    lasting: Lasting,
    source: Source,
    /// One reload at a time.
    reloading: Mutex<()>,
}

impl Live {
    pub fn new(state: AppState, lasting: Lasting, source: Source) -> Self {
        state.metrics.record_generation(state.generation);
        Self {
            current: ArcSwap::from_pointee(state),
            lasting,
            source,
            reloading: Mutex::new(()),
        }
    }

    /// The generation a request arriving now runs under (keep it for the request's life).
    pub fn current(&self) -> Arc<AppState> {
        self.current.load_full()
    }

    /// Re-reads, validates and compiles the config, then swaps it in. On any error nothing
    /// changes and the error names the key. Logs one line either way and counts it.
    pub fn reload(&self) -> Result<Reloaded, ConfigError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.current();
        match self.next_generation(&old) {
            Ok((state, changes)) => {
                let generation = state.generation;
                self.lasting.auth_failures.reconfigure(&state.config.auth);
                self.lasting.users.reconfigure(&state.config);
                self.lasting.metrics.extend_labels(state.label_sets());
                if !state.auth.shares_jwks_with(&old.auth) {
                    spawn_jwks_refresher(&state);
                }
                self.current.store(Arc::new(state));
                self.lasting.metrics.record_reload(true, generation);
                tracing::info!(
                    generation,
                    changed = ?changes.applied,
                    "config reloaded: new requests use it, open streams keep theirs"
                );
                if !changes.need_restart.is_empty() {
                    tracing::warn!(
                        generation,
                        keys = ?changes.need_restart,
                        "config reload: these keys changed but apply only after a restart; \
                         they keep their running values"
                    );
                }
                Ok(Reloaded {
                    generation,
                    changes,
                })
            }
            Err(e) => {
                self.lasting.metrics.record_reload(false, old.generation);
                tracing::error!(
                    generation = old.generation,
                    error = %e,
                    "config reload rejected: nothing changed, the running config stays"
                );
                Err(e)
            }
        }
    }

    fn next_generation(&self, old: &AppState) -> Result<(AppState, Changes), ConfigError> {
        let read = self.source.read()?;
        let (config, changes) = diff::settle(&old.config, &read)?;
        let state = AppState::build(old.generation + 1, config, &self.lasting, Some(old))?;
        Ok((state, changes))
    }
}

/// Starts the JWKS fetch loop of a generation whose key set is new (it ends by itself once no
/// generation holds the set).
pub fn spawn_jwks_refresher(state: &AppState) {
    if let Some(refresher) = state.auth.jwks_refresher() {
        actix_rt::spawn(refresher.run());
    }
}

/// Reloads on every `SIGHUP` (the binary only; tests call [`Live::reload`] or the route). The
/// handler is installed before this returns, so a `SIGHUP` right after start-up reloads rather
/// than ends the process (the signal's default action).
pub fn reload_on_sighup(live: Arc<Live>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP: reload with POST /admin/v1/reload");
            return;
        }
    };
    actix_rt::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            // Errors are logged and counted by `reload`.
            let _ = live.reload();
        }
    });
}
