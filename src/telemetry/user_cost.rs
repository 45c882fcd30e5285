//! The bounded per-user cost table behind `tollgate_user_cost_usd_total{user}`.
//!
//! Owns each user's running total in micro-USD and its Prometheus text rendering: at most
//! `max_user_series` users (the biggest spenders at render time) get their own series and
//! everyone else is summed into `user="_other"`, so a scrape never carries more than
//! `max_user_series + 1` series whatever the traffic. It also owns the small text helpers
//! (label escaping, exact micro-USD → USD formatting) that the rest of [`super::metrics`]
//! shares. It knows nothing of the `metrics` recorder, HTTP or configuration.
//!
//! # Memory bound and its approximation
//! The table keeps at most `4 × max_user_series` exact entries. When a new user would push it
//! past that, the smallest entries are folded into an `_other` accumulator until
//! `2 × max_user_series` remain (folding in a batch keeps the amortised cost per new user at
//! O(log n) instead of a scan per insert). Consequences:
//! - the sum over all rendered series (users plus `_other`) is always exact;
//! - a user's rendered total is exact unless that user was folded away earlier and came back;
//!   then it counts only the spend since coming back (the earlier spend stays in `_other`),
//!   i.e. it is a lower bound, and Prometheus sees that series as a counter reset;
//! - the current top `max_user_series` spenders are never folded (a fold keeps twice as many),
//!   so a steady big spender is always exact.
//!
//! `_other` only ever grows (it is the sum of everything outside the top N, and the sum of the
//! smallest k values can only grow as values grow or users arrive), so it is a valid counter.
//! A user whose id is literally `_other` is counted inside the `_other` series, so the output
//! never carries the same series twice.

use std::collections::HashMap;
use std::fmt::Write as _;

/// The label value that carries everyone outside the top spenders.
pub(super) const OTHER_USER: &str = "_other";

/// Running per-user cost totals with a hard bound on both memory and exposed series.
#[derive(Debug)]
pub(super) struct UserCostTable {
    max_series: usize,
    /// Exact per-user totals in micro-USD; never more than `4 × max_series` entries.
    totals: HashMap<String, u64>,
    /// Micro-USD of users folded out of `totals` (and of any user literally named `_other`).
    folded: u64,
}

impl UserCostTable {
    /// An empty table exposing at most `max_series` individual users.
    pub(super) fn new(max_series: usize) -> Self {
        Self {
            max_series,
            totals: HashMap::new(),
            folded: 0,
        }
    }

    /// The most exact entries the table keeps before folding.
    fn high_water(&self) -> usize {
        self.max_series.saturating_mul(4)
    }

    /// Adds `micro_usd` to `user`'s total.
    pub(super) fn add(&mut self, user: &str, micro_usd: u64) {
        if user == OTHER_USER {
            self.folded = self.folded.saturating_add(micro_usd);
            return;
        }
        if let Some(total) = self.totals.get_mut(user) {
            *total = total.saturating_add(micro_usd);
            return;
        }
        self.totals.insert(user.to_owned(), micro_usd);
        if self.totals.len() > self.high_water() {
            self.fold();
        }
    }

    /// Folds the smallest entries into `folded` until `2 × max_series` remain.
    fn fold(&mut self) {
        let keep = self.max_series.saturating_mul(2);
        let mut entries: Vec<(String, u64)> = self.totals.drain().collect();
        sort_biggest_first(&mut entries);
        for (_, total) in entries.drain(keep.min(entries.len())..) {
            self.folded = self.folded.saturating_add(total);
        }
        self.totals = entries.into_iter().collect();
    }

    /// Number of exact entries currently held (for tests and diagnostics).
    #[cfg(test)]
    pub(super) fn entries(&self) -> usize {
        self.totals.len()
    }

    /// The series a scrape shows: the top `max_series` users, biggest first (ties by user id),
    /// then `_other` with everyone else. `_other` is always present, so the series count is
    /// stable at `min(users, max_series) + 1`.
    pub(super) fn series(&self) -> Vec<(&str, u64)> {
        let mut entries: Vec<(&str, u64)> = self
            .totals
            .iter()
            .map(|(user, total)| (user.as_str(), *total))
            .collect();
        entries.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let rest = entries.split_off(self.max_series.min(entries.len()));
        let other = rest
            .iter()
            .fold(self.folded, |sum, (_, total)| sum.saturating_add(*total));
        entries.push((OTHER_USER, other));
        entries
    }

    /// Appends the `name` family (HELP, TYPE and one line per series, values in USD) to `out`.
    pub(super) fn render_into(&self, out: &mut String, name: &str, help: &str) {
        write_family_header(out, name, help, "counter");
        for (user, micro_usd) in self.series() {
            let _ = writeln!(
                out,
                "{name}{{user=\"{}\"}} {}",
                escape_label_value(user),
                format_micro_usd(micro_usd)
            );
        }
    }
}

/// Sorts `(key, total)` pairs biggest total first, ties by key, so folding is deterministic.
fn sort_biggest_first(entries: &mut [(String, u64)]) {
    entries.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
}

/// Writes the `# HELP` and `# TYPE` lines of one metric family.
pub(super) fn write_family_header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value for the text exposition format: `\` → `\\`, `"` → `\"`,
/// newline → `\n`.
pub(super) fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text: `\` → `\\`, newline → `\n` (quotes stay as they are there).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Formats micro-USD as a decimal USD amount, exactly (no float rounding):
/// `1_500_000` → `1.5`, `42` → `0.000042`, `0` → `0`.
pub(super) fn format_micro_usd(micro_usd: u64) -> String {
    let whole = micro_usd / 1_000_000;
    let frac = micro_usd % 1_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "tollgate_user_cost_usd_total";

    fn render(table: &UserCostTable) -> String {
        let mut out = String::new();
        table.render_into(&mut out, NAME, "Cost per user.");
        out
    }

    fn series_lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn formats_micro_usd_exactly() {
        assert_eq!(format_micro_usd(0), "0");
        assert_eq!(format_micro_usd(1_500_000), "1.5");
        assert_eq!(format_micro_usd(2_000_000), "2");
        assert_eq!(format_micro_usd(42), "0.000042");
        assert_eq!(format_micro_usd(1_234_567), "1.234567");
        assert_eq!(format_micro_usd(u64::MAX), "18446744073709.551615");
    }

    #[test]
    fn renders_biggest_spenders_first_and_the_rest_as_other() {
        let mut table = UserCostTable::new(2);
        table.add("alice", 1_000_000);
        table.add("bob", 3_000_000);
        table.add("carol", 2_000_000);
        table.add("dave", 500_000);
        table.add("alice", 250_000);
        let text = render(&table);
        assert!(text.starts_with(&format!(
            "# HELP {NAME} Cost per user.\n# TYPE {NAME} counter\n"
        )));
        assert_eq!(
            series_lines(&text),
            vec![
                "tollgate_user_cost_usd_total{user=\"bob\"} 3",
                "tollgate_user_cost_usd_total{user=\"carol\"} 2",
                "tollgate_user_cost_usd_total{user=\"_other\"} 1.75",
            ]
        );
    }

    #[test]
    fn ties_order_by_user_id() {
        let mut table = UserCostTable::new(3);
        for user in ["c", "a", "b"] {
            table.add(user, 7);
        }
        let users: Vec<&str> = table.series().iter().map(|(u, _)| *u).collect();
        assert_eq!(users, vec!["a", "b", "c", "_other"]);
    }

    #[test]
    fn other_is_present_even_when_empty() {
        let table = UserCostTable::new(5);
        assert_eq!(
            series_lines(&render(&table)),
            vec!["tollgate_user_cost_usd_total{user=\"_other\"} 0"]
        );
    }

    #[test]
    fn a_user_named_other_is_counted_in_the_other_series() {
        let mut table = UserCostTable::new(5);
        table.add("_other", 1_000_000);
        table.add("x", 1);
        let series = table.series();
        assert_eq!(series, vec![("x", 1), ("_other", 1_000_000)]);
    }

    #[test]
    fn folding_keeps_the_top_and_preserves_the_sum() {
        let mut table = UserCostTable::new(2);
        // 9 users (> 4 × 2) trigger a fold down to 2 × 2 entries.
        for i in 1..=9u64 {
            table.add(&format!("u{i}"), i * 100);
        }
        assert_eq!(table.entries(), 4);
        let series = table.series();
        assert_eq!(series[0], ("u9", 900));
        assert_eq!(series[1], ("u8", 800));
        let total: u64 = series.iter().map(|(_, v)| v).sum();
        assert_eq!(total, (1..=9u64).map(|i| i * 100).sum::<u64>());

        // A folded user who returns starts again from zero (a documented lower bound): its
        // earlier 100 stays in the folded accumulator, so the total is still exact.
        table.add("u1", 5);
        assert_eq!(table.entries(), 5);
        let folded = 100 + 200 + 300 + 400 + 500;
        let unshown = 700 + 600 + 5;
        assert_eq!(table.series().last(), Some(&("_other", folded + unshown)));
    }

    #[test]
    fn zero_series_puts_everyone_in_other() {
        let mut table = UserCostTable::new(0);
        table.add("a", 1);
        table.add("b", 2);
        assert_eq!(table.entries(), 0);
        assert_eq!(table.series(), vec![("_other", 3)]);
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("line\nbreak"), "line\\nbreak");
        let mut table = UserCostTable::new(1);
        table.add("we\"ird\\us\ner", 1_000_000);
        let text = render(&table);
        assert!(
            text.contains("{user=\"we\\\"ird\\\\us\\ner\"} 1\n"),
            "{text}"
        );
        assert_eq!(
            text.lines().count(),
            4,
            "a newline in a user id must not break a line"
        );
    }

    #[test]
    fn series_and_memory_stay_bounded_for_100_000_users() {
        let max = 1000;
        let mut table = UserCostTable::new(max);
        let mut expected_total = 0u64;
        for i in 0..100_000u64 {
            let cost = (i * 7_919) % 10_007 + 1;
            expected_total += cost;
            table.add(&format!("user-{i}"), cost);
            assert!(table.entries() <= 4 * max);
        }
        let series = table.series();
        assert!(series.len() <= max + 1, "{} series", series.len());
        assert_eq!(series.len(), max + 1);
        assert_eq!(series.iter().map(|(_, v)| v).sum::<u64>(), expected_total);
        assert_eq!(series_lines(&render(&table)).len(), max + 1);
    }

    #[test]
    fn other_never_decreases_as_users_spend() {
        let mut table = UserCostTable::new(3);
        let mut last_other = 0;
        for i in 0..2_000u64 {
            table.add(&format!("u{}", i % 37), (i * 31) % 97);
            let other = table.series().last().map_or(0, |(_, v)| *v);
            assert!(
                other >= last_other,
                "_other went from {last_other} to {other}"
            );
            last_other = other;
        }
    }
}
