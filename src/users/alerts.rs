//! Budget alerts: logged, and POSTed to `cost.alert_webhook_url` off the request path.
//!
//! Actors hand alerts over with `try_send` into a bounded queue (never waiting); one task on its
//! own thread delivers them, retrying a failing webhook with back-off.

use super::book::Alert;
use crate::telemetry::Metrics;
use actix_rt::Arbiter;
use arc_swap::ArcSwap;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Alerts waiting for delivery before new ones are dropped (and logged as dropped).
const QUEUE: usize = 1024;
/// Delivery attempts per alert, and the first back-off (doubling).
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// An alert for one user.
#[derive(Debug, Clone)]
pub struct UserAlert {
    pub user_id: String,
    pub alert: Alert,
}

/// The actors' handle on the delivery task.
#[derive(Debug, Clone)]
pub struct AlertSender {
    tx: mpsc::Sender<UserAlert>,
    /// `cost.alert_webhook_url`, read per alert (a reload may change it).
    webhook_url: Arc<ArcSwap<String>>,
}

impl AlertSender {
    /// Queues an alert; never waits.
    pub fn send(&self, alert: UserAlert) {
        if self.tx.try_send(alert).is_err() {
            tracing::error!("budget alert queue is full: an alert was dropped");
        }
    }

    /// Sends later alerts to `url` ("" = only log them).
    pub fn set_webhook_url(&self, url: &str) {
        self.webhook_url.store(Arc::new(url.to_string()));
    }
}

/// Starts the delivery task on `arbiter`. `webhook_url` empty: alerts are only logged.
pub fn start(arbiter: &Arbiter, webhook_url: String, metrics: Metrics) -> AlertSender {
    let (tx, rx) = mpsc::channel(QUEUE);
    let webhook_url = Arc::new(ArcSwap::from_pointee(webhook_url));
    let url = webhook_url.clone();
    // awc is not Send: build the delivery future on the arbiter's own thread.
    arbiter.spawn_fn(move || {
        actix_rt::spawn(deliver(rx, url, metrics));
    });
    AlertSender { tx, webhook_url }
}

async fn deliver(
    mut rx: mpsc::Receiver<UserAlert>,
    webhook: Arc<ArcSwap<String>>,
    metrics: Metrics,
) {
    let client = awc::Client::builder().timeout(POST_TIMEOUT).finish();
    while let Some(UserAlert { user_id, alert }) = rx.recv().await {
        metrics.record_budget_alert(alert.window);
        let spend = alert.spend_micro_usd as f64 / 1e6;
        let cap = alert.cap_micro_usd as f64 / 1e6;
        tracing::warn!(
            user_id = %user_id,
            window = alert.window,
            spend_usd = spend,
            cap_usd = cap,
            percent = alert.percent,
            "budget alert"
        );
        let webhook_url = webhook.load_full();
        if webhook_url.is_empty() {
            continue;
        }
        let body = json!({
            "user": user_id,
            "window": alert.window,
            "spend_usd": spend,
            "cap_usd": cap,
            "percent": alert.percent,
            "text": format!(
                "tollgate: user {user_id} has spent ${spend:.4} of the ${cap:.2} {} cap ({}% alert)",
                alert.window, alert.percent
            ),
        });
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            match client.post(webhook_url.as_str()).send_json(&body).await {
                Ok(response) if response.status().is_success() => break,
                outcome => {
                    let status = outcome.map(|r| r.status().as_u16()).ok();
                    tracing::warn!(attempt, ?status, "budget alert webhook failed");
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                }
            }
        }
    }
}
