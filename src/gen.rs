//! Generation of man pages and shell completions from the clap definitions (hidden
//! `generate` subcommand).
