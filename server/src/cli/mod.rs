//! The subcommands of `sandmill`.

mod client;
mod dev;
mod exec;
mod fleet;
mod new;
pub mod out;
mod quota;
mod replay;
mod resolve;
mod run;
mod settings;
mod token;
mod top;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Sandmill: run WebAssembly map, reduce, preprocessor and task functions
/// in a sandbox, on one machine or a fleet.
#[derive(Parser, Debug)]
#[command(name = "sandmill", version, about, long_about = None)]
pub struct Args {
    /// The server's URL, for the commands that talk to one.
    #[arg(
        long,
        global = true,
        env = "SANDMILL_SERVER",
        default_value = "http://127.0.0.1:7878"
    )]
    server: String,
    /// An API token, for a server that requires one.
    #[arg(long, global = true, env = "SANDMILL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust the certificates in this PEM file (besides the system's) for
    /// an HTTPS server, like one serving its own `--tls-cert`.
    #[arg(long, global = true, env = "SANDMILL_CA_CERT", value_name = "PEM")]
    ca_cert: Option<std::path::PathBuf>,
    /// How log lines (on stderr; `SANDMILL_LOG` sets the level) are
    /// written: `text` for people, `json` (one object per line, with the
    /// fields of the spans it is in: job, task, attempt and trace ids of a
    /// task) for log collectors.
    #[arg(
        long,
        global = true,
        env = "SANDMILL_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Plain text.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one call of a module locally and print what it produced.
    Exec(exec::ExecArgs),
    /// Run a job to completion in a throw-away embedded instance.
    Run(run::RunArgs),
    /// Serve the API with an in-process broker, blob store and workers.
    Dev(dev::DevArgs),
    /// Serve the API and scheduler of a fleet: NATS JetStream and a database.
    Serve(fleet::ServeArgs),
    /// Run tasks from NATS JetStream.
    Worker(fleet::WorkerArgs),
    /// API tokens: create (printing the secret once), list, revoke.
    Token(token::TokenArgs),
    /// Tenants' quotas: set, list, remove (the server's defaults hold
    /// where none are set).
    Quota(quota::QuotaArgs),
    /// Write a guest crate (map-reduce, task or preprocessor) that builds
    /// and runs as is.
    New(new::NewArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

/// Runs the chosen subcommand; `Ok` carries the exit code.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Exec(exec) => exec::run(exec),
        Command::Run(args) => run::run(args),
        Command::Dev(args) => dev::run(args),
        Command::Serve(args) => fleet::serve(args),
        Command::Worker(args) => fleet::worker(args),
        Command::New(args) => new::run(args),
        Command::Token(args) => token::run(args),
        Command::Quota(args) => quota::run(args),
        Command::Client(command) => client::run(
            &args.server,
            args.token.as_deref(),
            args.ca_cert.as_deref(),
            command,
        ),
    }
}
