//! `create`: finds or makes the image file, then the engine's checks and header.

use super::*;

#[derive(Serialize)]
struct CreateOut {
    path: String,
    mirror_uuid: String,
    image_uuid: String,
    /// The name given with --name; null without.
    name: Option<String>,
    data_offset: u64,
    data_size: u64,
    /// data_offset + data_size: what the mirror uses of the image (and every secondary needs).
    image_size: u64,
    region_size: u64,
    region_count: u64,
    max_secondaries: u32,
}

pub(super) fn create(ctx: &Ctx, a: cli::CreateArgs) -> Result<Exit> {
    let region_size = a.region_size;
    crate::format::layout::check_slots(a.max_secondaries)
        .map_err(|e| Error::invalid(format!("--max-secondaries: {e}")))?;
    let size = a.size;
    // The name is checked before anything is created: a refused name changes nothing.
    let named = match &a.name {
        Some(n) => Some(name_to_take(n, &a)?),
        None => None,
    };
    let name = display(&a.image);
    let exists = a.image.exists() || std::fs::symlink_metadata(&a.image).is_ok();
    let (mut dev, created) = if !exists {
        refuse_missing_device(&a.image, "creating")?;
        let Some(size) = size else {
            return Err(Error::invalid(format!(
                "{name} does not exist: give --size to create a new image file (e.g. --size 10G)"
            )));
        };
        let g = Geometry::for_data_size(size, region_size, a.max_secondaries)
            .map_err(|e| Error::invalid(format!("--size: {e}")))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&a.image)
            .map_err(|e| open_error("creating", &a.image, e))?;
        let guard = RemoveOnDrop(Some(a.image.clone()));
        file.set_len(g.total_len()).map_err(|e| {
            Error::invalid(format!("sizing {name} to {} bytes: {e}", g.total_len()))
        })?;
        (
            FileDevice::from_file(file, &a.image)
                .map_err(|e| open_error("opening", &a.image, e))?,
            Some(guard),
        )
    } else {
        (
            FileDevice::open(&a.image, true).map_err(|e| open_error("opening", &a.image, e))?,
            None,
        )
    };
    dev.handle().lock(Mode::Exclusive, ctx.wait, &name)?;
    let capacity = dev.len();
    let g = match size {
        Some(s) => Geometry::for_data_size(s, region_size, a.max_secondaries)
            .map_err(|e| Error::invalid(format!("--size: {e}")))?,
        None => Geometry::fit(capacity, region_size, a.max_secondaries)
            .map_err(|e| Error::invalid(format!("{name}: {e}")))?,
    };
    if created.is_none() {
        let existing: Arc<dyn Device> = Arc::new(
            FileDevice::open(&a.image, false).map_err(|e| open_error("opening", &a.image, e))?,
        );
        let checks = engine::create::check_existing(existing, &name, &g, a.force, dev.is_block())?;
        if let Some(f) = &checks.overwrites {
            crate::systemd::eprint_at(
                crate::systemd::Priority::Notice,
                &format!(
                    "mirrorctl: note: --force: overwriting {} on {name} (signature at byte {})",
                    f.what, f.offset
                ),
            );
        }
        if checks.grow {
            dev.set_len(g.total_len())
                .map_err(|e| Error::invalid(format!("growing {name}: {e}")))?;
        } else if size.is_some() && capacity > g.total_len() {
            crate::systemd::eprint_at(crate::systemd::Priority::Notice, &format!(
                "mirrorctl: note: {name} has {} ({capacity} bytes); the mirror uses the first {} ({} bytes: --size {} of data and {} of metadata), the rest is left as it is",
                format_size(capacity),
                format_size(g.total_len()),
                g.total_len(),
                format_size(g.data_size),
                format_size(g.data_offset)
            ));
        }
    }
    let dev = FileDevice::open(&a.image, true).map_err(|e| open_error("opening", &a.image, e))?;
    let img = engine::create::format_primary(Arc::new(dev), &name, g, a.force)?;
    if let Some(mut guard) = created {
        guard.0 = None;
    }
    let out = CreateOut {
        path: name.clone(),
        mirror_uuid: engine::uuid_str(&img.mirror_uuid),
        image_uuid: engine::uuid_str(&img.image_uuid),
        name: a.name.clone(),
        data_offset: g.data_offset,
        data_size: g.data_size,
        image_size: g.total_len(),
        region_size: g.region_size,
        region_count: g.region_count,
        max_secondaries: g.slots,
    };
    let named = match named {
        Some((n, file)) => {
            let text =
                crate::config::render_new(&n, &out.mirror_uuid, &names::location_of(&a.image));
            if let Err(e) = names::write_atomic(&file, &text) {
                return Err(Error::new(
                    e.kind,
                    format!(
                        "created mirror {} on {name}, but naming it {n} failed: {e}; `mirrorctl name {name} {n}` names it",
                        out.mirror_uuid
                    ),
                ));
            }
            Some((n, file))
        }
        None => None,
    };
    if a.json {
        print_json(&out)?;
    } else {
        println!(
            "created mirror {} on {name}: {} of data at offset {}, {} of {}, {}",
            out.mirror_uuid,
            format_size(g.data_size),
            g.data_offset,
            plural(g.region_count, "region"),
            format_size(g.region_size),
            plural(g.slots as u64, "secondary slot")
        );
        if let Some((n, file)) = &named {
            println!("named it {n} ({})", file.display());
        }
    }
    Ok(Exit::Success)
}

/// `create --name NAME`: the name checked, and its file's path. A name already taken is
/// refused (nothing is created), except with --force when its file points at the very
/// image being re-created (that mirror is overwritten anyway).
fn name_to_take(n: &str, a: &cli::CreateArgs) -> Result<(crate::config::Name, PathBuf)> {
    let n = crate::config::Name::parse(n).map_err(|e| Error::invalid(format!("--name: {e}")))?;
    let file = names::dir().join(n.file_name());
    if file.exists() {
        let here = names::location_of(&a.image);
        let same = names::load(&n)
            .map(|e| e.config.primary == here)
            .unwrap_or(false);
        if !(a.force && same) {
            return Err(Error::invalid(format!(
                "--name {n}: the name is taken ({}){}; nothing was created. Choose another name, or forget it first with `mirrorctl name --remove {n}`",
                file.display(),
                if same { " by the mirror on this image: give --force to re-create it" } else { "" }
            )));
        }
    }
    names::make_dir(&names::dir())?;
    Ok((n, file))
}

/// A path that does not exist is created as a new image file, except under /dev: there a
/// missing name is a device that is not there (a typo, a disk not plugged in), and a
/// regular file on devtmpfs would silently take the writes meant for it.
pub(super) fn refuse_missing_device(path: &Path, what: &str) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = std::fs::canonicalize(&parent).unwrap_or(parent);
    if dir.starts_with("/dev") {
        return Err(Error::invalid(format!(
            "{what} {}: no such device; check the name (`lsblk`, `losetup -a`), or give a path outside /dev to create an image file",
            display(path)
        )));
    }
    Ok(())
}

/// Removes a file this command created if the command fails before finishing.
pub(super) struct RemoveOnDrop(pub(super) Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}
