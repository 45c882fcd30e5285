//! The model price table and the cost of tokens, in integer micro-USD.
//!
//! Prices are configured in USD per million tokens, i.e. micro-USD per token. They are held as
//! nano-USD per token (exact for prices with up to three decimals) and a request's cost is
//! rounded up to the next micro-USD, so sums never drift the way floats do.

use crate::accounting::Usage;
use crate::config::ModelPrice;
use std::collections::BTreeMap;

/// Integer price of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    input_nano_usd_per_token: u64,
    output_nano_usd_per_token: u64,
}

impl Price {
    fn from_config(p: &ModelPrice) -> Self {
        let nano = |usd_per_million: f64| (usd_per_million * 1000.0).round() as u64;
        Self {
            input_nano_usd_per_token: nano(p.input_per_million_usd),
            output_nano_usd_per_token: nano(p.output_per_million_usd),
        }
    }

    /// Nano-USD per input token and per output token.
    pub fn nano_usd_per_token(&self) -> (u64, u64) {
        (
            self.input_nano_usd_per_token,
            self.output_nano_usd_per_token,
        )
    }

    /// Cost of `usage` in micro-USD, rounded up.
    pub fn cost_micro_usd(&self, usage: Usage) -> u64 {
        let nano = usage
            .input_tokens
            .saturating_mul(self.input_nano_usd_per_token)
            .saturating_add(
                usage
                    .output_tokens
                    .saturating_mul(self.output_nano_usd_per_token),
            );
        nano.div_ceil(1000)
    }
}

/// Prices by model name.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    prices: BTreeMap<String, Price>,
}

impl PriceTable {
    pub fn new(config: &BTreeMap<String, ModelPrice>) -> Self {
        Self {
            prices: config
                .iter()
                .map(|(model, p)| (model.clone(), Price::from_config(p)))
                .collect(),
        }
    }

    /// The price of `model`. Mock models may carry knobs after a colon (`mock-gpt:tokens=5`);
    /// they are priced as their base model.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.prices.get(self.priced_as(model)?).copied()
    }

    /// The price-table name `model` is priced under: itself, or a mock model's base name.
    pub fn priced_as<'m>(&self, model: &'m str) -> Option<&'m str> {
        if self.prices.contains_key(model) {
            return Some(model);
        }
        let (base, _) = model.split_once(':')?;
        (base.starts_with("mock-") && self.prices.contains_key(base)).then_some(base)
    }
}

/// Micro-USD as a decimal USD amount, for logs and reports.
pub fn micro_usd_to_usd(micro: u64) -> f64 {
    micro as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        PriceTable::new(&BTreeMap::from([
            (
                "gpt-4o".to_string(),
                ModelPrice {
                    input_per_million_usd: 2.50,
                    output_per_million_usd: 10.00,
                    ..ModelPrice::default()
                },
            ),
            (
                "mock-gpt".to_string(),
                ModelPrice {
                    input_per_million_usd: 2.50,
                    output_per_million_usd: 10.00,
                    ..ModelPrice::default()
                },
            ),
        ]))
    }

    #[test]
    fn costs_are_exact_integers_rounded_up() {
        let p = table().price("gpt-4o").unwrap();
        let usage = |i, o| Usage {
            input_tokens: i,
            output_tokens: o,
        };
        assert_eq!(p.cost_micro_usd(usage(1_000_000, 0)), 2_500_000);
        assert_eq!(p.cost_micro_usd(usage(0, 1_000_000)), 10_000_000);
        assert_eq!(p.cost_micro_usd(usage(1, 0)), 3, "2.5 micro-USD rounds up");
        assert_eq!(p.cost_micro_usd(usage(2, 1)), 15);
    }

    #[test]
    fn mock_knob_suffixes_price_as_the_base_model() {
        let t = table();
        assert!(t.price("mock-gpt:tokens=5").is_some());
        assert!(t.price("gpt-4o:tokens=5").is_none());
        assert!(t.price("unknown").is_none());
    }
}
