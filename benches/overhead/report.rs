//! The report: the table of figures per arm with the ratio columns, the targets of issue 7, and
//! the Anthropic arm's CPU per chunk against the OpenAI arm's (reported, not asserted).

use crate::arms::Arm;
use crate::client::Stats;
use crate::hist::exact_percentile;
use crate::load::{LoadResult, MemResult};
use crate::setup::Knobs;

/// What the phases measured for one arm.
#[derive(Default)]
pub struct ArmReport {
    /// Phase 1: its streams, their times to first token, and each minus the direct stream's
    /// next to it.
    pub one: Option<Stats>,
    pub one_ttft_ms: Vec<f64>,
    pub one_added_ms: Vec<f64>,
    /// Phase 1: the proxy's CPU time per stream it served, in µs (none for the direct arm).
    pub one_cpu_us: Option<f64>,
    /// Phase 2, all rounds.
    pub many: Option<LoadResult>,
    /// Phase 3, all rounds.
    pub sat: Option<LoadResult>,
    /// Phase 4, one per number of streams held open.
    pub mem: Vec<MemResult>,
}

/// The memory result for a wanted N (also when the fd limit capped it).
fn mem_for(r: &ArmReport, n: usize) -> Option<&MemResult> {
    r.mem
        .iter()
        .find(|m| m.requested == n || (m.requested < n && m.requested * 2 > n))
}

/// A figure with `digits` decimals, or a dash when there is none.
pub fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"))
}

/// Prints the table of figures, then the targets.
pub fn print_table(reports: &[(Arm, ArmReport)], knobs: &Knobs, tck: f64, pinned: bool) {
    let rows = figure_rows(reports, knobs, tck, pinned);
    print_figures(reports, &rows);
    print_targets(reports, knobs.conc);
    print_cost_targets(reports, knobs.conc);
    print_translation_cost(reports, tck);
}

/// The report of `arm`, when it ran.
fn report_of(reports: &[(Arm, ArmReport)], arm: Arm) -> Option<&ArmReport> {
    reports.iter().find(|(a, _)| *a == arm).map(|(_, r)| r)
}

/// A TTFT percentile (or with `gap`, a chunk-gap one) of phase 1, in ms.
fn stats_ms(s: &Option<Stats>, p: f64, gap: bool) -> Option<f64> {
    s.as_ref()
        .and_then(|s| if gap { s.gap.ms(p) } else { s.ttft.ms(p) })
}

/// A TTFT percentile (or with `gap`, a chunk-gap one) of a load phase, in ms.
fn load_ms(s: &Option<LoadResult>, p: f64, gap: bool) -> Option<f64> {
    s.as_ref().and_then(|r| {
        if gap {
            r.stats.gap.ms(p)
        } else {
            r.stats.ttft.ms(p)
        }
    })
}

/// A figure of the proxies only (what the direct arm adds is nothing by definition).
fn only_proxies(arm: Arm, figure: impl FnOnce() -> Option<f64>) -> Option<f64> {
    (arm != Arm::Direct).then(figure).flatten()
}

fn minus(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| a - b)
}

/// Chunks (or completed streams) per second in a load phase's windows.
fn per_s(r: &Option<LoadResult>, chunks: bool) -> Option<f64> {
    r.as_ref().filter(|r| r.secs > 0.0).map(|r| {
        (if chunks {
            r.stats.chunks_in_window
        } else {
            r.stats.completed_in_window
        }) as f64
            / r.secs
    })
}

/// One line of the table: its label, the figure for an arm, the decimals shown, and whether the
/// ratios between arms mean something for it.
type Row<'a> = (
    String,
    Box<dyn Fn(Arm, &ArmReport) -> Option<f64> + 'a>,
    usize,
    bool,
);

/// The table's lines, in order: phase 1, phase 2, phase 3, errors, phase 4 per N.
fn figure_rows<'a>(
    reports: &'a [(Arm, ArmReport)],
    knobs: &Knobs,
    tck: f64,
    pinned: bool,
) -> Vec<Row<'a>> {
    let Knobs {
        conc,
        sat_conc,
        one_streams,
        ..
    } = *knobs;
    let direct = report_of(reports, Arm::Direct);
    let cpu_per_chunk_us = move |r: &Option<LoadResult>, mock: bool| {
        r.as_ref().and_then(|r| r.cpu_per_chunk_us(tck, mock))
    };
    let busy = move |r: &Option<LoadResult>, mock: bool| {
        r.as_ref().filter(|r| r.secs > 0.0).map(|r| {
            (if mock { r.mock_ticks } else { r.proxy_ticks }) as f64 / tck / r.secs * 100.0
        })
    };
    // What else ran on the proxy's CPU (the idle proxies, other processes on the machine):
    // a check on the figures above, which assume the proxy had that core to itself.
    let intruders = move |r: &Option<LoadResult>| {
        r.as_ref()
            .filter(|_| pinned)
            .and_then(|r| r.others_busy_pct(tck))
    };
    // redis-server's CPU, charged to the Redis arm only (it sits on the mock's CPU).
    let redis_cpu = move |arm: Arm, r: &Option<LoadResult>, per_chunk: bool| {
        r.as_ref()
            .filter(|r| arm == Arm::TollgateRedis && r.stats.chunks_in_window > 0 && r.secs > 0.0)
            .map(|r| {
                let secs = r.redis_ticks as f64 / tck;
                if per_chunk {
                    secs * 1e6 / r.stats.chunks_in_window as f64
                } else {
                    secs / r.secs * 100.0
                }
            })
    };

    let d_one = move |p: f64| direct.and_then(|d| stats_ms(&d.one, p, false));
    let d_many = move |p: f64| direct.and_then(|d| load_ms(&d.many, p, false));
    let mut rows: Vec<Row<'a>> = vec![
        (
            format!("TTFT, 1 stream, p50 (ms) [n={one_streams}]"),
            Box::new(move |_, r| stats_ms(&r.one, 50.0, false)),
            3,
            true,
        ),
        (
            "TTFT, 1 stream, p99 (ms)".into(),
            Box::new(move |_, r| stats_ms(&r.one, 99.0, false)),
            3,
            true,
        ),
        (
            "added TTFT, 1 stream, p50 (ms, Δ quantiles)".into(),
            Box::new(move |a, r| {
                only_proxies(a, || minus(stats_ms(&r.one, 50.0, false), d_one(50.0)))
            }),
            3,
            false,
        ),
        (
            "added TTFT, 1 stream, p99 (ms, Δ quantiles)".into(),
            Box::new(move |a, r| {
                only_proxies(a, || minus(stats_ms(&r.one, 99.0, false), d_one(99.0)))
            }),
            3,
            false,
        ),
        (
            "added TTFT, 1 stream, p50 (ms, paired)".into(),
            Box::new(move |a, r| only_proxies(a, || exact_percentile(&r.one_added_ms, 50.0))),
            3,
            false,
        ),
        (
            "added TTFT, 1 stream, p99 (ms, paired)".into(),
            Box::new(move |a, r| only_proxies(a, || exact_percentile(&r.one_added_ms, 99.0))),
            3,
            false,
        ),
        (
            "proxy CPU per stream, 1 at a time (µs; 20 chunks)".into(),
            Box::new(move |_, r| r.one_cpu_us),
            1,
            true,
        ),
        (
            format!("TTFT, {conc} streams, p50 (ms)"),
            Box::new(move |_, r| load_ms(&r.many, 50.0, false)),
            3,
            true,
        ),
        (
            format!("TTFT, {conc} streams, p99 (ms)"),
            Box::new(move |_, r| load_ms(&r.many, 99.0, false)),
            3,
            true,
        ),
        (
            format!("added TTFT, {conc} streams, p50 (ms, Δ quantiles)"),
            Box::new(move |a, r| {
                only_proxies(a, || minus(load_ms(&r.many, 50.0, false), d_many(50.0)))
            }),
            3,
            false,
        ),
        (
            format!("added TTFT, {conc} streams, p99 (ms, Δ quantiles)"),
            Box::new(move |a, r| {
                only_proxies(a, || minus(load_ms(&r.many, 99.0, false), d_many(99.0)))
            }),
            3,
            false,
        ),
        (
            format!("chunk gap, {conc} streams, p50 (ms; paced 50 ms)"),
            Box::new(move |_, r| load_ms(&r.many, 50.0, true)),
            2,
            true,
        ),
        (
            format!("chunk gap, {conc} streams, p99 (ms)"),
            Box::new(move |_, r| load_ms(&r.many, 99.0, true)),
            2,
            true,
        ),
        (
            format!("chunk gap, {conc} streams, max (ms)"),
            Box::new(move |_, r| r.many.as_ref().and_then(|m| m.stats.gap.max_ms())),
            2,
            true,
        ),
        (
            format!("completed streams/s, {conc} streams"),
            Box::new(move |_, r| per_s(&r.many, false)),
            1,
            true,
        ),
        (
            format!("chunks/s relayed, {conc} paced streams"),
            Box::new(move |_, r| per_s(&r.many, true)),
            0,
            true,
        ),
        (
            format!("proxy CPU per chunk, {conc} paced (µs)"),
            Box::new(move |_, r| cpu_per_chunk_us(&r.many, false).filter(|v| *v > 0.0)),
            2,
            true,
        ),
        (
            format!("proxy CPU busy, {conc} paced (% of a core)"),
            Box::new(move |_, r| busy(&r.many, false).filter(|v| *v > 0.0)),
            0,
            true,
        ),
        (
            format!("CPU 1 busy besides the proxy, {conc} paced (%)"),
            Box::new(move |_, r| intruders(&r.many)),
            0,
            false,
        ),
        (
            format!("redis-server CPU per chunk, {conc} paced (µs)"),
            Box::new(move |a, r| redis_cpu(a, &r.many, true)),
            2,
            false,
        ),
        (
            format!("redis-server CPU busy, {conc} paced (% of a core)"),
            Box::new(move |a, r| redis_cpu(a, &r.many, false)),
            0,
            false,
        ),
        (
            format!("chunks/s relayed, saturation ({sat_conc} unpaced)"),
            Box::new(move |_, r| per_s(&r.sat, true)),
            0,
            true,
        ),
        (
            "proxy CPU per chunk, saturation (µs)".into(),
            Box::new(move |_, r| cpu_per_chunk_us(&r.sat, false).filter(|v| *v > 0.0)),
            2,
            true,
        ),
        (
            "proxy CPU busy, saturation (% of a core)".into(),
            Box::new(move |_, r| busy(&r.sat, false).filter(|v| *v > 0.0)),
            0,
            true,
        ),
        (
            "CPU 1 busy besides the proxy, saturation (%)".into(),
            Box::new(move |_, r| intruders(&r.sat)),
            0,
            false,
        ),
        (
            "redis-server CPU per chunk, saturation (µs)".into(),
            Box::new(move |a, r| redis_cpu(a, &r.sat, true)),
            2,
            false,
        ),
        (
            "redis-server CPU busy, saturation (% of a core)".into(),
            Box::new(move |a, r| redis_cpu(a, &r.sat, false)),
            0,
            false,
        ),
        (
            "mock CPU busy, saturation (% of a core)".into(),
            Box::new(move |_, r| busy(&r.sat, true)),
            0,
            true,
        ),
        (
            "mock CPU per chunk, saturation (µs)".into(),
            Box::new(move |_, r| cpu_per_chunk_us(&r.sat, true)),
            2,
            true,
        ),
        (
            "errors (all phases)".into(),
            Box::new(move |_, r| {
                Some(
                    (r.one.as_ref().map_or(0, |s| s.errors)
                        + r.many.as_ref().map_or(0, |m| m.stats.errors)
                        + r.sat.as_ref().map_or(0, |m| m.stats.errors)) as f64,
                )
            }),
            0,
            false,
        ),
    ];
    for &n in &knobs.mem_streams {
        rows.push((
            format!("open streams held (of {n})"),
            Box::new(move |_, r| mem_for(r, n).map(|m| m.open as f64)),
            0,
            false,
        ));
        rows.push((
            format!("KiB resident per open stream @{n}"),
            Box::new(move |_, r| mem_for(r, n).and_then(MemResult::kib_per_stream)),
            1,
            true,
        ));
        rows.push((
            format!("proxy RSS with {n} open (MiB)"),
            Box::new(move |_, r| mem_for(r, n).map(|m| m.loaded_kib as f64 / 1024.0)),
            1,
            false,
        ));
        rows.push((
            format!("proxy RSS idle, before {n} open (MiB)"),
            Box::new(move |_, r| mem_for(r, n).map(|m| m.idle_kib as f64 / 1024.0)),
            1,
            true,
        ));
        for p in [50.0, 99.0] {
            rows.push((
                format!("TTFT, {n} streams opening at once, p{p} (ms)"),
                Box::new(move |_, r| mem_for(r, n).and_then(|m| exact_percentile(&m.ttft_ms, p))),
                3,
                true,
            ));
        }
    }
    rows
}

/// The table: a column per arm, then the ratio columns.
fn print_figures(reports: &[(Arm, ArmReport)], rows: &[Row]) {
    // (arm, against, header): the ratio columns.
    let ratios = [
        (Arm::Tollgate, Arm::Direct, "tg÷direct"),
        (Arm::Tollgate, Arm::Nginx, "tg÷nginx"),
        (Arm::Floor, Arm::Nginx, "fl÷nginx"),
        (Arm::Tollgate, Arm::Floor, "tg÷fl"),
        (Arm::TollgateRedis, Arm::Direct, "tgR÷direct"),
        (Arm::TollgateRedis, Arm::Nginx, "tgR÷nginx"),
        (Arm::TollgateRedis, Arm::Tollgate, "tgR÷tg"),
        (Arm::TollgateAnthropic, Arm::Tollgate, "tgA÷tg"),
    ];
    // Only the ratios of two arms that ran.
    let ran = |arm: Arm| reports.iter().any(|(a, _)| *a == arm);
    let ratios: Vec<_> = ratios
        .into_iter()
        .filter(|(arm, against, _)| ran(*arm) && ran(*against))
        .collect();
    println!();
    println!(
        "tg = tollgate (in-memory state), tgR = tollgate-redis (TOLLGATE_REDIS_URL), \
         tgA = tollgate-anthropic (the same as tg, relaying an Anthropic-format provider), \
         fl = floor (actix-web + awc relaying bytes, none of tollgate's work)"
    );
    // A column as wide as the longest arm name needs.
    let width = reports
        .iter()
        .map(|(arm, _)| arm.name().len() + 2)
        .fold(15, usize::max);
    let mut header = format!("{:<50}", "figure");
    for (arm, _) in reports {
        header.push_str(&format!("{:>width$}", arm.name()));
    }
    for (_, _, name) in &ratios {
        header.push_str(&format!("{name:>12}"));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.chars().count()));
    for (label, f, digits, ratio) in rows {
        let mut line = format!("{label:<50}");
        let mut values = Vec::new();
        for (arm, r) in reports {
            let v = f(*arm, r);
            values.push((*arm, v));
            line.push_str(&format!("{:>width$}", fmt(v, *digits)));
        }
        let value = |arm: Arm| values.iter().find(|(a, _)| *a == arm).and_then(|(_, v)| *v);
        // Ratios of added TTFT against another proxy's added TTFT are meaningful; against
        // direct (added = 0 by definition) not, nor when either is negative (noise).
        let is_added = label.starts_with("added");
        for &(arm, against, _) in &ratios {
            let wanted = if against == Arm::Direct {
                *ratio && !is_added
            } else {
                *ratio || is_added
            };
            let r = value(arm)
                .zip(value(against))
                .filter(|(v, o)| wanted && *v >= 0.0 && *o > 1e-9)
                .map(|(a, o)| a / o);
            line.push_str(&format!("{:>12}", fmt(r, 2)));
        }
        println!("{line}");
    }
}

/// Each gateway against the targets of issue 16 (per-request cost at nginx's level), which ask
/// for ratios to nginx in the same run.
fn print_cost_targets(reports: &[(Arm, ArmReport)], conc: usize) {
    let Some(ng) = report_of(reports, Arm::Nginx) else {
        return;
    };
    println!();
    println!("targets (issue 16, against nginx in this run; reported, not asserted):");
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    // The floor's line says what the stack alone leaves of each target.
    for arm in [
        Arm::Floor,
        Arm::Tollgate,
        Arm::TollgateAnthropic,
        Arm::TollgateRedis,
    ] {
        let Some(tg) = report_of(reports, arm) else {
            continue;
        };
        println!("  {}:", arm.name());
        println!(
            "    CPU per stream (1 at a time, 20 chunks) ≤ 1.25 × nginx: {} µs ÷ {} µs = {} ×",
            fmt(tg.one_cpu_us, 1),
            fmt(ng.one_cpu_us, 1),
            fmt(ratio(tg.one_cpu_us, ng.one_cpu_us), 2)
        );
        let p50 = |r: &ArmReport| exact_percentile(&r.one_added_ms, 50.0);
        println!(
            "    added TTFT p50 (paired) ≤ nginx's + 0.030 ms: {} ms against {} ms (+{} ms)",
            fmt(p50(tg), 3),
            fmt(p50(ng), 3),
            fmt(minus(p50(tg), p50(ng)), 3)
        );
        let p99 = |r: &ArmReport| load_ms(&r.many, 99.0, false);
        println!(
            "    TTFT p99 at {conc} paced streams ≤ nginx's (the issue asks at 100): {} ms against {} ms",
            fmt(p99(tg), 3),
            fmt(p99(ng), 3)
        );
        for m in &tg.mem {
            println!(
                "    {} streams opening at once, TTFT p99 ≤ 2 ms: {} ms (nginx {} ms)",
                m.requested,
                fmt(exact_percentile(&m.ttft_ms, 99.0), 3),
                fmt(
                    mem_for(ng, m.requested).and_then(|n| exact_percentile(&n.ttft_ms, 99.0)),
                    3
                )
            );
            println!(
                "    idle RSS ≤ 40 MiB: {} MiB; memory per open stream ≤ 24 KiB: {} KiB (at {} open)",
                fmt(Some(m.idle_kib as f64 / 1024.0), 1),
                fmt(m.kib_per_stream(), 1),
                m.open
            );
        }
        let sat_ratio = ratio(per_s(&tg.sat, true), per_s(&ng.sat, true));
        println!(
            "    flat-out chunks/s ≥ 1.0 × nginx: {} ×",
            fmt(sat_ratio, 2)
        );
    }
}

/// Each gateway against the targets of issue 7.
fn print_targets(reports: &[(Arm, ArmReport)], conc: usize) {
    println!();
    println!("targets (issue 7; reported, not asserted):");
    let d_many = |p: f64| report_of(reports, Arm::Direct).and_then(|d| load_ms(&d.many, p, false));
    let ng = report_of(reports, Arm::Nginx);
    for arm in [Arm::Tollgate, Arm::TollgateAnthropic, Arm::TollgateRedis] {
        let Some(tg) = report_of(reports, arm) else {
            continue;
        };
        println!("  {}:", arm.name());
        let paired99 = exact_percentile(&tg.one_added_ms, 99.0);
        println!(
            "    added TTFT p99, 1 stream ≤ 0.4 ms: {} ms (paired)",
            fmt(paired99, 3)
        );
        let many99 = minus(load_ms(&tg.many, 99.0, false), d_many(99.0));
        println!(
            "    added TTFT p99, {conc} streams ≤ 2 ms: {} ms (Δ of p99s)",
            fmt(many99, 3)
        );
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let sat_ratio = ratio(per_s(&tg.sat, true), ng.and_then(|n| per_s(&n.sat, true)));
        let paced_ratio = ratio(per_s(&tg.many, true), ng.and_then(|n| per_s(&n.many, true)));
        println!(
            "    chunks/s ≥ 0.8 × nginx: {} × at saturation, {} × with {conc} paced streams",
            fmt(sat_ratio, 2),
            fmt(paced_ratio, 2)
        );
        for m in &tg.mem {
            println!(
                "    ≤ 48 KiB per open stream: {} KiB at {} open",
                fmt(m.kib_per_stream(), 1),
                m.open
            );
        }
    }
}

/// The Anthropic arm's translation cost: its proxy CPU per relayed chunk over the OpenAI arm's.
fn print_translation_cost(reports: &[(Arm, ArmReport)], tck: f64) {
    let (Some(tg), Some(tga)) = (
        report_of(reports, Arm::Tollgate),
        report_of(reports, Arm::TollgateAnthropic),
    ) else {
        return;
    };
    let per_chunk = |r: &ArmReport, sat: bool| {
        let phase = if sat { &r.sat } else { &r.many };
        phase
            .as_ref()
            .and_then(|p| p.cpu_per_chunk_us(tck, false))
            .filter(|v| *v > 0.0)
    };
    let ratio = |sat: bool| {
        per_chunk(tga, sat)
            .zip(per_chunk(tg, sat))
            .map(|(a, o)| a / o)
    };
    println!();
    println!("translation cost (Anthropic provider; reported, not asserted):");
    println!(
        "  proxy CPU per chunk at saturation, tollgate-anthropic ÷ tollgate ≤ 1.20: \
         {} µs ÷ {} µs = {} × (paced: {} ×)",
        fmt(per_chunk(tga, true), 2),
        fmt(per_chunk(tg, true), 2),
        fmt(ratio(true), 2),
        fmt(ratio(false), 2)
    );
}
