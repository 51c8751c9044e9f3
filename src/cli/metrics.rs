//! The status report as Prometheus metrics (text exposition format 0.0.4), for
//! node_exporter's textfile collector or a scrape: gauges of health, legs, verify, resync
//! and the running command, counters of what `serve` did. Names follow the Prometheus
//! conventions: `mirrorctl_` prefix, base units (bytes, seconds), `_total` for counters.

use crate::engine::status::Status;
use std::fmt::Write as _;

/// Every state a leg can be in, for the one-hot `mirrorctl_leg_state`.
const LEG_STATES: &[&str] = &[
    "in-sync",
    "syncing",
    "fractured-by-admin",
    "fractured-by-error",
];
/// Every result a verify records, for the one-hot `mirrorctl_last_verify_result`.
const VERIFY_RESULTS: &[&str] = &["clean", "differences", "repaired", "partial", "incomplete"];

/// A label value escaped as the exposition format requires.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out {
    text: String,
    /// Labels every series carries: the mirror and the primary's path.
    base: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut l = self.base.clone();
        for (k, v) in labels {
            let _ = write!(l, ",{k}=\"{}\"", esc(v));
        }
        let _ = writeln!(self.text, "{name}{{{l}}} {value}");
    }
    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

/// The metrics of one mirror.
pub fn render(s: &Status) -> String {
    let mut o = Out {
        text: String::new(),
        base: format!(
            "mirror=\"{}\",primary=\"{}\"",
            esc(&s.mirror_uuid),
            esc(&s.path)
        ),
    };
    o.family(
        "mirrorctl_info",
        "gauge",
        "Always 1; the labels say what the image is.",
    );
    o.sample(
        "mirrorctl_info",
        &[("role", &s.role), ("format_version", &s.format_version)],
        1.0,
    );
    o.gauge(
        "mirrorctl_healthy",
        "1 unless this image needs attention in its role: on a primary, 1 when the mirror is fully in sync (status --check exits 0); on a secondary, a detached image or a replaced primary always 1 (the mirror's health is its current primary's; mirrorctl_info's role label says which this is).",
        b(s.healthy_in_role),
    );
    o.gauge(
        "mirrorctl_clean",
        "1 when no write intent is pending, else 0.",
        b(s.clean),
    );
    o.gauge(
        "mirrorctl_generation",
        "The mirror generation (bumped on every state change).",
        s.generation as f64,
    );
    o.gauge(
        "mirrorctl_data_size_bytes",
        "Size of the data area.",
        s.data_size as f64,
    );
    o.gauge(
        "mirrorctl_secondary_slots",
        "Secondary slots of the mirror.",
        s.max_secondaries as f64,
    );
    o.gauge(
        "mirrorctl_secondaries",
        "Secondary slots in use.",
        s.secondaries as f64,
    );
    o.gauge(
        "mirrorctl_write_intent_regions",
        "Regions marked in the write-intent log (a running writer's, or pending recovery).",
        s.write_intent_regions as f64,
    );
    o.gauge(
        "mirrorctl_write_intent_bytes",
        "Bytes of the regions marked in the write-intent log.",
        s.write_intent_bytes as f64,
    );
    o.gauge(
        "mirrorctl_pinned_extents",
        "Write-intent extents kept marked after primary write errors (never healthy while above 0).",
        s.pinned_extents as f64,
    );
    o.family(
        "mirrorctl_leg_state",
        "gauge",
        "1 for the state each secondary is in, 0 for the others.",
    );
    for l in &s.legs {
        let slot = l.slot.to_string();
        // The short form: a TLS URI's query (its certificate paths) is no part of the name.
        let leg = crate::device::nbd::display(&l.path);
        for st in LEG_STATES {
            o.sample(
                "mirrorctl_leg_state",
                &[("slot", &slot), ("leg", &leg), ("state", st)],
                b(l.state == *st),
            );
        }
    }
    o.family(
        "mirrorctl_leg_out_of_sync_bytes",
        "gauge",
        "Bytes a secondary lacks (its fracture log, and pending write intents).",
    );
    for l in &s.legs {
        let slot = l.slot.to_string();
        // The short form: a TLS URI's query (its certificate paths) is no part of the name.
        let leg = crate::device::nbd::display(&l.path);
        o.sample(
            "mirrorctl_leg_out_of_sync_bytes",
            &[("slot", &slot), ("leg", &leg)],
            l.out_of_sync_bytes as f64,
        );
    }
    o.family(
        "mirrorctl_leg_out_of_sync_regions",
        "gauge",
        "Regions a secondary lacks.",
    );
    for l in &s.legs {
        let slot = l.slot.to_string();
        // The short form: a TLS URI's query (its certificate paths) is no part of the name.
        let leg = crate::device::nbd::display(&l.path);
        o.sample(
            "mirrorctl_leg_out_of_sync_regions",
            &[("slot", &slot), ("leg", &leg)],
            l.out_of_sync_regions as f64,
        );
    }
    let t = s.times;
    o.gauge(
        "mirrorctl_created_timestamp_seconds",
        "When the mirror was created (Unix time).",
        t.created as f64,
    );
    o.gauge(
        "mirrorctl_last_verify_timestamp_seconds",
        "When the last verify run ended (Unix time; 0: never).",
        t.last_verify as f64,
    );
    o.gauge(
        "mirrorctl_last_full_verify_timestamp_seconds",
        "When the last complete verify pass ended (Unix time; 0: never).",
        t.last_full_verify as f64,
    );
    o.gauge(
        "mirrorctl_last_verify_mismatched_regions",
        "Mismatched regions the last verify pass found.",
        s.last_verify_mismatched_regions.unwrap_or(0) as f64,
    );
    o.family(
        "mirrorctl_last_verify_result",
        "gauge",
        "1 for the result of the last verify run, 0 for the others (all 0: never verified).",
    );
    for r in VERIFY_RESULTS {
        o.sample(
            "mirrorctl_last_verify_result",
            &[("result", r)],
            b(s.last_verify_result.as_deref() == Some(*r)),
        );
    }
    o.gauge(
        "mirrorctl_verify_cursor_regions",
        "Where the next budgeted verify run starts.",
        s.verify_cursor as f64,
    );
    o.gauge(
        "mirrorctl_last_resync_timestamp_seconds",
        "When the last resync ended (Unix time; 0: never).",
        t.last_resync as f64,
    );
    o.gauge(
        "mirrorctl_last_recovery_timestamp_seconds",
        "When the last recovery after an unclean stop ran (Unix time; 0: never).",
        t.last_recovery as f64,
    );
    if let Some(seq) = s.last_event_seq {
        o.family(
            "mirrorctl_events_total",
            "counter",
            "Events recorded in the journal (the newest event's sequence number).",
        );
        o.sample("mirrorctl_events_total", &[], seq as f64);
    }
    o.family(
        "mirrorctl_running",
        "gauge",
        "1 while a command runs on the mirror (the label names it), else absent.",
    );
    if let Some(r) = &s.running {
        o.sample("mirrorctl_running", &[("command", &r.command)], 1.0);
        if let Some(p) = &r.progress {
            o.gauge(
                "mirrorctl_progress_done_bytes",
                "Bytes the running command has processed.",
                p.done_bytes as f64,
            );
            if let Some(total) = p.total_bytes {
                o.gauge(
                    "mirrorctl_progress_total_bytes",
                    "Bytes the running command will process.",
                    total as f64,
                );
            }
            o.gauge(
                "mirrorctl_progress_rate_bytes_per_second",
                "The running command's rate over the last seconds.",
                p.rate_bytes_per_second as f64,
            );
        }
        if let Some(v) = &r.serve {
            o.gauge(
                "mirrorctl_serve_clients",
                "Client connections open now.",
                v.clients as f64,
            );
            o.gauge(
                "mirrorctl_serve_hot_extents",
                "Extents hot now (marked in the write-intent log).",
                v.hot_extents as f64,
            );
            o.gauge(
                "mirrorctl_serve_writes_refused",
                "1 while serve refuses writes: fewer in-sync secondaries than --min-in-sync.",
                if v.writes_refused.is_some() { 1.0 } else { 0.0 },
            );
            o.gauge(
                "mirrorctl_serve_min_in_sync",
                "Secondaries serve needs in sync to acknowledge writes (--min-in-sync).",
                v.min_in_sync as f64,
            );
            o.gauge(
                "mirrorctl_serve_in_sync_secondaries",
                "Secondaries in sync and receiving writes now.",
                v.in_sync_secondaries as f64,
            );
            let counters: [(&str, &str, u64); 7] = [
                (
                    "mirrorctl_serve_connections_total",
                    "Client connections since serve started.",
                    v.connections_total,
                ),
                (
                    "mirrorctl_serve_writes_total",
                    "Write, zero and trim requests served.",
                    v.writes_total,
                ),
                (
                    "mirrorctl_serve_written_bytes_total",
                    "Bytes written, zeroed or trimmed for hosts.",
                    v.written_bytes_total,
                ),
                (
                    "mirrorctl_serve_reads_total",
                    "Read requests served.",
                    v.reads_total,
                ),
                (
                    "mirrorctl_serve_read_bytes_total",
                    "Bytes read for hosts.",
                    v.read_bytes_total,
                ),
                (
                    "mirrorctl_serve_flushes_total",
                    "Flush requests served.",
                    v.flushes_total,
                ),
                (
                    "mirrorctl_serve_refused_total",
                    "Writes and flushes refused for too few in-sync secondaries.",
                    v.refused_total,
                ),
            ];
            for (name, help, value) in counters {
                o.family(name, "counter", help);
                o.sample(name, &[], value as f64);
            }
        }
    }
    o.text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
