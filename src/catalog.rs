//! The model catalogue: for every priced model, its price, the provider that serves it and the
//! provider's name for it, and the models a request moves to when it fails before its first
//! token (`[pricing.<model>]` `upstream`, `upstream_model`, `fallback`).
//!
//! Providers are numbered as [`Config::providers`] lists them (`default` first); the relay's
//! per-worker clients use the same numbering.

use crate::config::Config;
use crate::pricing::{Price, PriceTable};
use std::collections::BTreeMap;

/// Where one model is served.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The model's name in the gateway's price table.
    pub model: String,
    pub price: Price,
    /// Index into [`Config::providers`].
    pub provider: usize,
    /// The name the provider knows it by.
    pub upstream_model: String,
}

#[derive(Debug, Clone)]
struct Entry {
    provider: usize,
    upstream_model: String,
    fallback: Vec<String>,
}

/// Every priced model's placement and fallbacks.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    prices: PriceTable,
    entries: BTreeMap<String, Entry>,
}

impl Catalog {
    /// Built from a validated config (every `upstream` names a provider, every fallback is
    /// priced).
    pub fn new(config: &Config) -> Self {
        let providers = config.providers();
        let index = |name: &str| providers.iter().position(|p| p.name == name).unwrap_or(0);
        let entries = config
            .pricing
            .iter()
            .map(|(model, m)| {
                let entry = Entry {
                    provider: index(&m.upstream),
                    upstream_model: m.upstream_model.clone(),
                    fallback: m.fallback.clone(),
                };
                (model.clone(), entry)
            })
            .collect();
        Self {
            prices: PriceTable::new(&config.pricing),
            entries,
        }
    }

    pub fn price(&self, model: &str) -> Option<Price> {
        self.prices.price(model)
    }

    /// The models that may serve a request for `model`, in the order to try them: the model
    /// itself, then its fallbacks, each followed by its own (each model once). `None` when
    /// `model` is not priced. A mock model asked for with knobs (`mock-gpt:tokens=5`) keeps its
    /// knobs upstream unless its entry renames it.
    pub fn chain(&self, model: &str) -> Option<Vec<Placement>> {
        let priced = self.prices.priced_as(model)?;
        let mut chain = vec![self.placement(priced, model)?];
        let mut next: Vec<&str> = self.fallbacks(priced).rev().collect();
        while let Some(candidate) = next.pop() {
            if chain.iter().any(|p| p.model == candidate) {
                continue;
            }
            if let Some(placement) = self.placement(candidate, candidate) {
                chain.push(placement);
                next.extend(self.fallbacks(candidate).rev());
            }
        }
        Some(chain)
    }

    fn fallbacks(&self, model: &str) -> impl DoubleEndedIterator<Item = &str> {
        self.entries
            .get(model)
            .map_or(&[][..], |e| &e.fallback[..])
            .iter()
            .map(String::as_str)
    }

    /// `model` (priced under `priced`), as asked for by `asked`.
    fn placement(&self, priced: &str, asked: &str) -> Option<Placement> {
        let entry = self.entries.get(priced)?;
        let upstream_model = if entry.upstream_model.is_empty() {
            asked.to_string()
        } else {
            entry.upstream_model.clone()
        };
        Some(Placement {
            model: priced.to_string(),
            price: self.prices.price(priced)?,
            provider: entry.provider,
            upstream_model,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelPrice, NamedUpstreamConfig};

    fn config() -> Config {
        let mut c = Config::default();
        c.upstreams.insert(
            "claude".into(),
            NamedUpstreamConfig {
                url: "http://127.0.0.1:9".into(),
                ..NamedUpstreamConfig::default()
            },
        );
        let model = |upstream: &str, upstream_model: &str, fallback: &[&str]| ModelPrice {
            input_per_million_usd: 1.0,
            output_per_million_usd: 2.0,
            upstream: upstream.into(),
            upstream_model: upstream_model.into(),
            fallback: fallback.iter().map(|s| s.to_string()).collect(),
        };
        c.pricing
            .insert("a".into(), model("claude", "claude-a-2026", &["b", "c"]));
        c.pricing.insert("b".into(), model("default", "", &["d"]));
        c.pricing.insert("c".into(), model("default", "", &["a"]));
        c.pricing.insert("d".into(), model("default", "", &[]));
        c.pricing
            .insert("mock-x".into(), model("default", "", &["d"]));
        c
    }

    #[test]
    fn chains_follow_fallbacks_depth_first_each_model_once() {
        let catalog = Catalog::new(&config());
        let chain = catalog.chain("a").unwrap();
        let names: Vec<&str> = chain.iter().map(|p| p.model.as_str()).collect();
        assert_eq!(names, ["a", "b", "d", "c"]);
        assert_eq!(chain[0].upstream_model, "claude-a-2026");
        assert_eq!(chain[0].provider, 1, "default is 0, claude 1");
        assert_eq!(chain[1].upstream_model, "b");
        assert_eq!(chain[1].provider, 0);
        assert!(catalog.chain("unpriced").is_none());
    }

    #[test]
    fn mock_knobs_travel_upstream() {
        let catalog = Catalog::new(&config());
        let chain = catalog.chain("mock-x:tokens=3").unwrap();
        assert_eq!(chain[0].model, "mock-x");
        assert_eq!(chain[0].upstream_model, "mock-x:tokens=3");
        assert_eq!(chain[1].model, "d");
    }
}
