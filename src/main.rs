//! The `mirrorctl` binary: parse, run, map the outcome to the documented exit code.

use clap::{CommandFactory, FromArgMatches};

fn main() {
    mirrorctl::cli::commands::install_sigbus_handler();
    // The matches are kept: a mirror's name fills in defaults for the options not given.
    let parsed = mirrorctl::cli::Cli::command()
        .try_get_matches()
        .and_then(|m| mirrorctl::cli::Cli::from_arg_matches(&m).map(|c| (c, m)));
    let (cli, matches) = match parsed {
        Ok(c) => c,
        Err(e) => std::process::exit(mirrorctl::cli::parse_failure(e)),
    };
    let json = cli.command.json();
    match mirrorctl::cli::commands::run_matched(cli, &matches) {
        Ok(exit) => std::process::exit(exit.code()),
        // The reader went away (`mirrorctl read ... | head`): what it wanted it got.
        Err(e) if e.broken_pipe => std::process::exit(0),
        Err(e) => {
            mirrorctl::systemd::eprint_at(
                mirrorctl::systemd::Priority::Error,
                &format!("mirrorctl: {}", mirrorctl::error::plain(&e.to_string())),
            );
            if json {
                // Scripts never parse an empty stdout: one document on failure too.
                println!("{:#}", mirrorctl::cli::exit::json(&e));
            }
            std::process::exit(mirrorctl::cli::exit::of(&e).code());
        }
    }
}
