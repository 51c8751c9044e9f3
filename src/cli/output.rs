//! Output shared by the commands: JSON documents, warning lines, progress bars.

use crate::engine::{Mirror, Progress};
use crate::error::{Error, Result};
use crate::live::{ProgressCounters, Publisher};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::io::{self, Write};
use std::sync::Arc;

/// A progress bar on the terminal, also counted into the live record (for `status` in
/// another terminal) when one is attached with [`Bar::published`].
pub struct Bar(ProgressBar, Arc<ProgressCounters>);

impl Bar {
    /// A bar drawn on stderr when `draw` (a terminal), hidden otherwise.
    pub fn new(draw: bool, msg: &str) -> Bar {
        let pb = if draw {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template(
                // As wide as the terminal; one unit (binary) for every number.
                "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        pb.set_message(msg.to_string());
        Bar(pb, Arc::new(ProgressCounters::new()))
    }

    /// Also publishes the progress in `live`'s record (if any), as phase `phase`.
    pub fn published(self, live: Option<&Publisher>, phase: &str) -> Bar {
        self.publish_to(live, phase);
        self
    }

    pub fn publish_to(&self, live: Option<&Publisher>, phase: &str) {
        if let Some(l) = live {
            self.1.set_phase(phase);
            l.follow(self.1.clone());
        }
    }
}

impl Progress for Bar {
    fn set_total(&self, total: u64) {
        self.0.set_length(total);
        self.1.set_total(total);
    }
    fn advance(&self, bytes: u64) {
        self.1.advance(bytes);
        // Never above 100 %.
        let len = self.0.length().unwrap_or(0);
        let pos = (self.0.position() + bytes).min(len);
        self.0.set_position(pos);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

pub fn print_warnings(m: &mut Mirror) {
    for w in m.take_warnings() {
        crate::systemd::eprint(
            &format!("mirrorctl: {}", crate::error::plain(&w)),
            crate::systemd::Priority::Warning,
        );
    }
}

pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(|e| Error::output(e.into()))?;
    writeln!(out).map_err(Error::output)
}
