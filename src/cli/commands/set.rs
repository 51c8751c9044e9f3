//! `set`: changes a running serve's settings live (its `--min-in-sync`), carried out by the
//! serving process through its control socket; with nothing serving there is nothing to set.

use super::*;

pub(super) fn set(ctx: &Ctx, a: cli::SetArgs) -> Result<Exit> {
    // Not served: the lock is free (or held by another command, which is busy as usual).
    match open_mirror(ctx, &a.primary, Mode::Shared) {
        Ok(_) => Err(Error::invalid(format!(
            "set {}: no `mirrorctl serve` runs on it, and --min-in-sync is not stored in the mirror: it is an option of serve (and write) for their run; give it to the next `mirrorctl serve {}`. Nothing was changed",
            display(&a.primary),
            display(&a.primary)
        ))),
        Err(e) => via_server(ctx, &a.primary, e, "set"),
    }
}

/// What `set` prints once done: the old and new minimum.
pub(super) fn set_text(old: u32, new: u32, now_in_sync: u32, refused: Option<&str>) -> String {
    format!(
        "min-in-sync changed from {old} to {new} ({now_in_sync} in sync now){}\n",
        match refused {
            Some(why) => format!("; writes are still refused: {why}"),
            None => "; writes are acknowledged".into(),
        }
    )
}
