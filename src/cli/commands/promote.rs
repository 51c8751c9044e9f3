//! `promote`: failover, or finishing an interrupted promotion (P7).

use super::attach::nbd_secondary;
use super::*;

#[derive(Serialize)]
struct PromoteOut {
    path: String,
    generation: u64,
    old_primary_slot: u32,
    old_primary_reachable: bool,
    notes: Vec<String>,
    /// The mirror's names (`mirrorctl name`), which now point at this image.
    names: Vec<String>,
}

/// After a promotion: the mirror's names follow the new primary (on this machine; an NBD
/// export's names are pointed at it on its own machine).
fn follow(m: &Mirror, promoted: &str) -> Vec<String> {
    let uuid = engine::uuid_str(&m.sb().mirror_uuid);
    if nbd::is_uri(promoted) {
        return Vec::new();
    }
    names::follow_promotion(&uuid, &names::location_of(Path::new(promoted)))
}

pub(super) fn promote(ctx: &Ctx, a: cli::PromoteArgs) -> Result<Exit> {
    let name = display(&a.secondary);
    let dev: Arc<dyn Device> = if nbd::is_uri(&name) {
        // An export has no lock to take: the admin makes sure nothing else uses the image
        // (see README, Remote secondaries).
        Arc::new(
            open_nbd(&name, true)
                .map_err(|e| Error::invalid(format!("opening secondary {name}: {e}")))?,
        )
    } else {
        let dev = FileDevice::open(&a.secondary, true)
            .map_err(|e| open_error("opening", &a.secondary, e))?;
        dev.handle().lock(Mode::Exclusive, ctx.wait, &name)?;
        Arc::new(dev)
    };
    let img = Image::read(dev.clone()).map_err(|e| engine::read_error(&name, e, &*dev))?;
    if img.sb.role == Role::Primary {
        drop(img);
        return finish_interrupted(ctx, dev, &name, a.json);
    }
    // The former primary, if it can be reached: it is the authority on how current this
    // image is, and it must not be written while it is demoted.
    let mut old = None;
    // A recorded path that names this very image is the former primary's path on another
    // machine (two machines with the image at the same path, as a cluster has them): not
    // reachable from here, and opening it would find this command's own lock.
    let here = |p: &Path| {
        !nbd::is_uri(&name)
            && identity(p).is_ok()
            && identity(p).ok() == identity(&a.secondary).ok()
    };
    if img.sb.role == Role::Secondary
        && !img.sb.primary_location.is_empty()
        && here(Path::new(&img.sb.primary_location))
    {
        crate::systemd::eprint_at(
            crate::systemd::Priority::Notice,
            &format!(
                "mirrorctl: note: former primary not used: its recorded path {} names {name} itself here (it is on another machine)",
                img.sb.primary_location
            ),
        );
    } else if img.sb.role == Role::Secondary && !img.sb.primary_location.is_empty() {
        let p = PathBuf::from(&img.sb.primary_location);
        match open_mirror_wait(&p, Mode::Exclusive, ctx.wait) {
            // No recovery here: promote's checks read the write-intent log as it is, so a
            // refusal leaves both images exactly as they were (its log plan includes the
            // intents, P3).
            Ok(mut m) => {
                print_warnings(&mut m);
                old = Some(m);
            }
            Err(e) if e.kind == Kind::Busy => return Err(e),
            Err(e) => crate::systemd::eprint_at(
                crate::systemd::Priority::Notice,
                &format!("mirrorctl: note: former primary not used: {e}"),
            ),
        }
    }
    drop(img);
    let opener = Arc::new(FileOpener { writable: true });
    let (out, mut m) = crate::engine::failover::promote(dev, &name, old, a.force, opener)?;
    print_warnings(&mut m);
    let names = follow(&m, &name);
    let res = PromoteOut {
        path: name.clone(),
        generation: out.generation,
        old_primary_slot: out.old_primary_slot,
        old_primary_reachable: out.old_primary_reachable,
        notes: out.notes,
        names,
    };
    if a.json {
        print_json(&res)?;
    } else {
        println!("promoted {name} to primary (generation {})", res.generation);
        for n in &res.notes {
            println!("  {n}");
        }
    }
    health_exit(&mut m)
}

/// `promote` of an image that is already the primary: finishes an interrupted promotion
/// (P7, `Mirror::finish_promotion`), opening and locking the former primary by its slot's
/// entry, or says there is nothing to promote.
fn finish_interrupted(ctx: &Ctx, dev: Arc<dyn Device>, name: &str, json: bool) -> Result<Exit> {
    let mut m = Mirror::open(dev, name, Arc::new(FileOpener { writable: true }), true)?;
    let done = m.finish_promotion(|leg| {
        if nbd::is_uri(&leg.location) {
            return nbd_secondary(&leg.location);
        }
        let old_path = PathBuf::from(leg.open_path());
        let d = FileDevice::open(&old_path, true)
            .map_err(|e| open_error("opening the former primary", &old_path, e))?;
        d.handle().lock(Mode::Exclusive, ctx.wait, &leg.location)?;
        Ok((Arc::new(d), leg.canonical.clone()))
    })?;
    print_warnings(&mut m);
    let names = follow(&m, name);
    let note = format!(
        "finished an interrupted promotion: the former primary {} is now slot {} of {name}, with {} to copy: run `mirrorctl resync {name}`",
        done.location, done.slot, plural(done.regions, "region")
    );
    if json {
        print_json(&PromoteOut {
            path: name.to_string(),
            generation: m.sb().generation,
            old_primary_slot: done.slot,
            old_primary_reachable: true,
            notes: vec![note],
            names,
        })?;
    } else {
        println!(
            "{name} is already the primary (generation {})",
            m.sb().generation
        );
        println!("  {note}");
    }
    health_exit(&mut m)
}
