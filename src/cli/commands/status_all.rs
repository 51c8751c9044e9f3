//! `status --all`: the report of every named mirror, composed from the one-mirror renderers
//! (text blocks, a JSON array, and one Prometheus exposition whose families are merged, each
//! sample labelled with the mirror's name). A name whose primary cannot be opened or is not
//! that mirror's primary is reported as such, and is unhealthy.

use super::*;
use crate::engine::status::Status;

/// One named mirror: its report, or why there is none.
struct Named {
    name: String,
    file: PathBuf,
    /// From the file, when it could be read.
    primary: Option<String>,
    mirror: Option<String>,
    report: std::result::Result<Status, String>,
}

impl Named {
    fn healthy(&self) -> bool {
        self.report.as_ref().is_ok_and(|s| s.healthy)
    }
}

fn collect() -> Result<Vec<Named>> {
    let mut out = Vec::new();
    for (stem, file, e) in names::all()? {
        let n = match e {
            Err(x) => Named {
                name: stem,
                file,
                primary: None,
                mirror: None,
                report: Err(x.to_string()),
            },
            Ok(e) => Named {
                name: stem,
                file,
                primary: Some(e.config.primary.clone()),
                mirror: Some(e.config.mirror.clone()),
                report: report(&e).map_err(|x| x.to_string()),
            },
        };
        out.push(n);
    }
    Ok(out)
}

fn report(e: &names::Entry) -> Result<Status> {
    names::check_primary(e)?;
    super::status::image_report(Path::new(&e.config.primary), &e.config.primary)
}

pub(super) fn status_all(a: &cli::StatusArgs) -> Result<Exit> {
    let all = collect()?;
    let format = match (a.json, a.format) {
        (true, _) => cli::StatusFormat::Json,
        (false, f) => f.unwrap_or(cli::StatusFormat::Text),
    };
    match format {
        cli::StatusFormat::Json => {
            let mut v = Vec::new();
            for n in &all {
                v.push(match &n.report {
                    Ok(s) => {
                        let mut doc =
                            serde_json::to_value(s).map_err(|e| Error::output(e.into()))?;
                        if let Some(o) = doc.as_object_mut() {
                            o.insert("name".into(), n.name.clone().into());
                            o.insert("config".into(), display(&n.file).into());
                        }
                        doc
                    }
                    Err(e) => serde_json::json!({
                        "name": n.name,
                        "config": display(&n.file),
                        "mirror_uuid": n.mirror,
                        "path": n.primary,
                        "healthy": false,
                        "error": e,
                    }),
                });
            }
            print_json(&v)?;
        }
        cli::StatusFormat::Prometheus => {
            let parts: Vec<Part> = all
                .iter()
                .map(|n| match &n.report {
                    Ok(s) => Part::Metrics(n.name.clone(), cli::metrics::render(s)),
                    Err(_) => Part::Unreadable {
                        name: n.name.clone(),
                        mirror: n.mirror.clone().unwrap_or_default(),
                        primary: n.primary.clone().unwrap_or_default(),
                    },
                })
                .collect();
            io::stdout()
                .write_all(merge_metrics(&parts).as_bytes())
                .map_err(Error::output)?;
        }
        cli::StatusFormat::Text => {
            let mut o = io::stdout().lock();
            let r = (|| -> io::Result<()> {
                if all.is_empty() {
                    writeln!(
                        o,
                        "no named mirrors (no NAME.toml in {}; `mirrorctl name PRIMARY NAME` names one)",
                        names::dir().display()
                    )?;
                }
                for (i, n) in all.iter().enumerate() {
                    if i > 0 {
                        writeln!(o)?;
                    }
                    writeln!(o, "name          {} ({})", n.name, n.file.display())?;
                    match &n.report {
                        Ok(s) => cli::status_text::render_text(s, &mut o)?,
                        Err(e) => {
                            if let Some(p) = &n.primary {
                                writeln!(o, "primary       {p}")?;
                            }
                            writeln!(o, "error         {e}")?;
                            writeln!(o, "healthy       no (cannot be read)")?;
                        }
                    }
                }
                Ok(())
            })();
            r.map_err(Error::output)?;
        }
    }
    Ok(if a.check && !all.iter().all(Named::healthy) {
        Exit::Degraded
    } else {
        Exit::Success
    })
}

/// What goes into the merged exposition for one name.
enum Part {
    /// The name and the mirror's own metrics.
    Metrics(String, String),
    /// A name whose primary cannot be opened or is not its mirror's primary.
    Unreadable {
        name: String,
        mirror: String,
        primary: String,
    },
}

const READABLE: &str = "mirrorctl_name_readable";
const HEALTHY: &str = "mirrorctl_healthy";

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One exposition of several mirrors: each family's HELP and TYPE once (in the order
/// first seen), then its samples of every mirror, each with a `name` label first. A name
/// that cannot be read has `mirrorctl_healthy` 0; every name has `mirrorctl_name_readable`.
fn merge_metrics(parts: &[Part]) -> String {
    // (family, help line, type line, samples)
    let mut fams: Vec<(String, String, String, Vec<String>)> = Vec::new();
    fn fam<'a>(
        fams: &'a mut Vec<(String, String, String, Vec<String>)>,
        name: &str,
    ) -> &'a mut (String, String, String, Vec<String>) {
        let i = match fams.iter().position(|f| f.0 == name) {
            Some(i) => i,
            None => {
                fams.push((name.to_string(), String::new(), String::new(), Vec::new()));
                fams.len() - 1
            }
        };
        &mut fams[i]
    }
    fam(&mut fams, READABLE).1 = format!(
        "# HELP {READABLE} 1 when the named mirror's primary was opened and is its mirror's primary (status --all), else 0."
    );
    fam(&mut fams, READABLE).2 = format!("# TYPE {READABLE} gauge");
    for p in parts {
        match p {
            Part::Metrics(name, text) => {
                let label = format!("name=\"{}\"", esc(name));
                fam(&mut fams, READABLE)
                    .3
                    .push(format!("{READABLE}{{{label}}} 1"));
                let mut current = String::new();
                for line in text.lines() {
                    if let Some(rest) = line.strip_prefix("# HELP ") {
                        let f = rest.split(' ').next().unwrap_or("");
                        current = f.to_string();
                        let e = fam(&mut fams, f);
                        if e.1.is_empty() {
                            e.1 = line.to_string();
                        }
                    } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                        let f = rest.split(' ').next().unwrap_or("");
                        current = f.to_string();
                        let e = fam(&mut fams, f);
                        if e.2.is_empty() {
                            e.2 = line.to_string();
                        }
                    } else if line.starts_with('#') || line.trim().is_empty() {
                        continue;
                    } else {
                        let cut = line.find(['{', ' ']).unwrap_or(line.len());
                        let (metric, rest) = line.split_at(cut);
                        let sample = match rest.strip_prefix('{') {
                            Some(r) if r.starts_with('}') => format!("{metric}{{{label}{r}"),
                            Some(r) => format!("{metric}{{{label},{r}"),
                            None => format!("{metric}{{{label}}}{rest}"),
                        };
                        let f = if current.is_empty() { metric } else { &current };
                        fam(&mut fams, f).3.push(sample);
                    }
                }
            }
            Part::Unreadable {
                name,
                mirror,
                primary,
            } => {
                let labels = format!(
                    "name=\"{}\",mirror=\"{}\",primary=\"{}\"",
                    esc(name),
                    esc(mirror),
                    esc(primary)
                );
                fam(&mut fams, READABLE)
                    .3
                    .push(format!("{READABLE}{{name=\"{}\"}} 0", esc(name)));
                let h = fam(&mut fams, HELP_OF_HEALTHY.0);
                if h.1.is_empty() {
                    h.1 = format!("# HELP {HEALTHY} {}", HELP_OF_HEALTHY.1);
                    h.2 = format!("# TYPE {HEALTHY} gauge");
                }
                h.3.push(format!("{HEALTHY}{{{labels}}} 0"));
            }
        }
    }
    let mut out = String::new();
    for (_, help, ty, samples) in fams {
        for l in [help, ty].iter().filter(|l| !l.is_empty()) {
            out.push_str(l);
            out.push('\n');
        }
        for s in samples {
            out.push_str(&s);
            out.push('\n');
        }
    }
    out
}

/// The help of `mirrorctl_healthy` when no readable mirror gave it.
const HELP_OF_HEALTHY: (&str, &str) = (
    HEALTHY,
    "1 when the mirror is fully in sync (status --check exits 0), else 0.",
);

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "# HELP mirrorctl_info Always 1.\n# TYPE mirrorctl_info gauge\nmirrorctl_info{mirror=\"u1\",primary=\"/a\",role=\"primary\"} 1\n# HELP mirrorctl_healthy H.\n# TYPE mirrorctl_healthy gauge\nmirrorctl_healthy{mirror=\"u1\",primary=\"/a\"} 1\n";

    #[test]
    fn each_family_is_described_once_with_the_samples_of_every_mirror_labelled_by_name() {
        let two = ONE.replace("u1", "u2").replace("/a", "/b");
        let m = merge_metrics(&[
            Part::Metrics("vm".into(), ONE.into()),
            Part::Metrics("db".into(), two),
        ]);
        assert_eq!(m.matches("# HELP mirrorctl_healthy").count(), 1, "{m}");
        assert_eq!(m.matches("# TYPE mirrorctl_info").count(), 1, "{m}");
        assert!(
            m.contains("mirrorctl_healthy{name=\"vm\",mirror=\"u1\",primary=\"/a\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("mirrorctl_healthy{name=\"db\",mirror=\"u2\",primary=\"/b\"} 1"),
            "{m}"
        );
        assert!(m.contains("mirrorctl_name_readable{name=\"db\"} 1"), "{m}");
        // Samples follow their own family's TYPE line.
        let h = m.find("# TYPE mirrorctl_healthy").unwrap();
        let i = m.find("# TYPE mirrorctl_info").unwrap();
        let s = m.find("mirrorctl_info{name=\"db\"").unwrap();
        assert!(i < s && s < h, "{m}");
    }

    #[test]
    fn an_unreadable_name_is_unhealthy_and_not_readable_even_alone() {
        let m = merge_metrics(&[Part::Unreadable {
            name: "vm".into(),
            mirror: "u1".into(),
            primary: "/gone".into(),
        }]);
        assert!(m.contains("# HELP mirrorctl_healthy "), "{m}");
        assert!(
            m.contains("mirrorctl_healthy{name=\"vm\",mirror=\"u1\",primary=\"/gone\"} 0"),
            "{m}"
        );
        assert!(m.contains("mirrorctl_name_readable{name=\"vm\"} 0"), "{m}");
    }

    #[test]
    fn a_sample_without_labels_gets_the_name_label() {
        let m = merge_metrics(&[Part::Metrics(
            "vm".into(),
            "# TYPE x gauge\nx 3\ny{} 4\n".into(),
        )]);
        assert!(m.contains("x{name=\"vm\"} 3"), "{m}");
        assert!(m.contains("y{name=\"vm\"} 4"), "{m}");
    }
}
